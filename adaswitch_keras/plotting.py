"""Plots of a distillation run: divergence and switching over training steps."""

from matplotlib.figure import Figure

PANELS = (
    ("divergence", "divergence to the teacher"),
    ("switch_rate", "fraction of sequences that switched"),
    ("teacher_token_fraction", "fraction of tokens the teacher wrote"),
    ("switch_position", "mean switch position (tokens)"),
)


def subplots(*args, **kwargs):
    """`pyplot.subplots` without pyplot: a Figure of its own, so nothing global
    changes and no display is needed; save it with `figure.savefig`."""
    figsize = kwargs.pop("figsize", None)
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(*args, **kwargs)


def plot_history(history, path, steps_per_epoch=1, title=None):
    """One panel per logged metric of a Keras `History.history`, as a PNG.

    Each point is the mean over one epoch; with `fit(steps_per_epoch=n)` the
    x axis is in training steps (epoch * n).
    """
    panels = [(key, label) for key, label in PANELS if history.get(key)]
    if not panels:
        raise ValueError(f"Nothing to plot: the history has only {sorted(history)}.")
    figure, axes = subplots(
        len(panels), 1, sharex=True, squeeze=False, figsize=(7, 2.2 * len(panels))
    )
    for axis, (key, label) in zip(axes[:, 0], panels):
        values = history[key]
        axis.plot([(i + 1) * steps_per_epoch for i in range(len(values))], values, marker=".")
        axis.set_ylabel(key)
        axis.set_title(label, fontsize=9)
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("training step")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path
