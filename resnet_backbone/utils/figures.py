"""Figures written to files: matplotlib Figures with their own Agg canvas (no pyplot, no global state, no display)."""
import os

__all__ = ["new_figure", "save_figure"]


def new_figure(figsize):
    """A matplotlib Figure drawn by the Agg backend, independent of pyplot (nothing to close afterwards)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str, *, dpi: int = 100) -> str:
    """Lay ``fig`` out and write it to ``path`` (its folder is created); returns ``path``."""
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
