// Equations: pymdownx.arithmatex (generic mode) wraps them as \( \) and \[ \]
// inside elements of class "arithmatex"; MathJax typesets only those.
//
// MathJax 2 is served from the site itself (docs/build.sh copies it from the
// jupyter-server-mathjax package into javascripts/mathjax/), so equations
// render offline. The tutorial pages load the same copy (mkdocs.yml's
// custom_mathjax_url) before this script runs: then it does nothing.
(function () {
  if (window.MathJax) {
    return;
  }
  window.MathJax = {  // MathJax 2 reads its configuration from this object
    tex2jax: {
      inlineMath: [["\\(", "\\)"]],
      displayMath: [["\\[", "\\]"]],
      processEscapes: true,
      processEnvironments: true,
      ignoreClass: ".*|",
      processClass: "arithmatex",
    },
    "HTML-CSS": { availableFonts: [], webFont: "STIX-Web" },  // the fonts the package ships
  };
  var script = document.createElement("script");
  script.src = document.currentScript.src.replace(/mathjax\.js(\?.*)?$/, "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full");
  document.head.appendChild(script);
})();
