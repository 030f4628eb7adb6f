// Equations: pymdownx.arithmatex (generic mode) wraps them as \( \) and \[ \]
// inside elements of class "arithmatex"; MathJax 3 typesets only those.
//
// The tutorial pages rendered by mkdocs-jupyter bring their own MathJax (the
// nbconvert template loads it inside the page body, before this script runs),
// so this loader does nothing where MathJax is already present.
(function () {
  if (window.MathJax) {
    return;
  }
  window.MathJax = {
    tex: {
      inlineMath: [["\\(", "\\)"]],
      displayMath: [["\\[", "\\]"]],
      processEscapes: true,
      processEnvironments: true,
    },
    options: {
      ignoreHtmlClass: ".*|",
      processHtmlClass: "arithmatex",
    },
  };
  var script = document.createElement("script");
  script.src = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js";
  script.async = true;
  document.head.appendChild(script);
})();
