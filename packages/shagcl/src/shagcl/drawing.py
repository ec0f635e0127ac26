"""Drawing of one predicted scene graph: the image with its boxes (left) and the graph (right)."""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["draw_scene_graph"]


def draw_scene_graph(
    graph: dict, path: str | Path, image_root: str | Path | None = None, max_triplets: int = 10
) -> Path:
    """Draw ``graph`` (one entry of ``scene_graphs.json``) to ``path`` (PNG).

    The image is read from ``image_root / graph['filename']`` when it exists, else a blank canvas of the image's
    size is used. Only objects in the top ``max_triplets`` triplets are drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, Rectangle

    width, height = graph["image_size"]
    triplets = graph["triplets"][:max_triplets]
    used = sorted({t["subject"] for t in triplets} | {t["object"] for t in triplets})
    fig, (ax_img, ax_graph) = plt.subplots(1, 2, figsize=(12, 6))
    image_file = Path(image_root) / graph["filename"] if image_root is not None else None
    if image_file is not None and image_file.is_file():
        from PIL import Image

        ax_img.imshow(Image.open(image_file).convert("RGB"))
    else:
        ax_img.imshow([[[0.9, 0.9, 0.9]]], extent=(0, width, height, 0))
    ax_img.set_xlim(0, width)
    ax_img.set_ylim(height, 0)
    colours = plt.get_cmap("tab10")
    for n, i in enumerate(used):
        x1, y1, x2, y2 = graph["boxes"][i]
        ax_img.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colours(n % 10), lw=2))
        ax_img.text(
            x1,
            y1,
            f"{i}:{graph['labels'][i]}",
            color="white",
            fontsize=8,
            bbox={"facecolor": colours(n % 10), "alpha": 0.8, "pad": 1},
        )
    ax_img.set_title(f"image {graph['image_id']}")
    ax_img.axis("off")
    pos = {
        i: (math.cos(2 * math.pi * n / max(len(used), 1)), math.sin(2 * math.pi * n / max(len(used), 1)))
        for n, i in enumerate(used)
    }
    for t in triplets:
        (xs, ys), (xo, yo) = pos[t["subject"]], pos[t["object"]]
        ax_graph.add_patch(
            FancyArrowPatch(
                (xs, ys),
                (xo, yo),
                arrowstyle="-|>",
                mutation_scale=15,
                connectionstyle="arc3,rad=0.15",
                color="grey",
                shrinkA=18,
                shrinkB=18,
            )
        )
        ax_graph.text(
            (xs + xo) / 2,
            (ys + yo) / 2,
            f"{t['predicate']} ({t['score']:.2f})",
            fontsize=7,
            ha="center",
            color="darkred",
        )
    for n, i in enumerate(used):
        x, y = pos[i]
        ax_graph.text(
            x,
            y,
            f"{i}:{graph['labels'][i]}",
            ha="center",
            va="center",
            fontsize=9,
            bbox={"boxstyle": "round", "facecolor": colours(n % 10), "alpha": 0.5},
        )
    ax_graph.set_xlim(-1.4, 1.4)
    ax_graph.set_ylim(-1.4, 1.4)
    ax_graph.set_title(f"top {len(triplets)} triplets")
    ax_graph.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
