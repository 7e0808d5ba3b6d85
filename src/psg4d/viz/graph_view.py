"""The report's scene graph as HTML/SVG: the object legend and the graph drawing.

Objects sit on a circle, coloured like their mask tubes (:func:`~psg4d.viz.overlay.object_colours`);
one curved arrow per (subject, object) pair carries the predicates between them. Every node,
edge and label holds its frames (``data-spans``), so the report's script can highlight what is
active at the current frame.

A long or crowded video can have a hundred objects: the graph draws the objects of the relations
shown (:func:`featured_objects`), and the legend lists them first with the rest folded away, so
both stay readable whatever the object count.
"""

from __future__ import annotations

import html
import math

from psg4d.data.schema import ObjectTrack, Relation, SceneGraph4D, spans_from_mask
from psg4d.viz.overlay import hex_colour
from psg4d.viz.timeline import spans_attr


# objects drawn when no relation is shown (a graph of nodes alone)
MAX_LONE_NODES = 12


def featured_objects(graph: SceneGraph4D, relations: list[Relation]) -> list[ObjectTrack]:
    """The objects of ``relations`` (the relations shown), in the graph's order; with none, the
    first :data:`MAX_LONE_NODES` objects."""
    ids = {i for r in relations for i in (r.subject_id, r.object_id)}
    return [o for o in graph.objects if o.object_id in ids] if ids else graph.objects[:MAX_LONE_NODES]


def _legend_item(o: ObjectTrack, colours: dict[int, tuple[int, int, int]]) -> str:
    return (f"<label class='legend-item' data-obj='{o.object_id}'>"
            f"<input type='checkbox' class='obj-toggle' data-obj='{o.object_id}' checked>"
            f"<span class='swatch' style='background:{hex_colour(colours[o.object_id])}'></span>"
            f"{html.escape(o.majority_category())} <span class='oid'>#{o.object_id}</span></label>")


def legend_html(graph: SceneGraph4D, colours: dict[int, tuple[int, int, int]],
                featured: list[ObjectTrack] | None = None) -> str:
    """One toggle per object (its colour, category and id), which shows or hides its tube: the
    ``featured`` objects (default: all), then the others folded in a ``<details>``."""
    featured = graph.objects if featured is None else featured
    first = {o.object_id for o in featured}
    rest = [o for o in graph.objects if o.object_id not in first]
    items = "".join(_legend_item(o, colours) for o in featured)
    if rest:
        items += (f"<details class='legend-more'><summary>{len(rest)} more object{'s' if len(rest) > 1 else ''}"
                  "</summary>" + "".join(_legend_item(o, colours) for o in rest) + "</details>")
    return items or "<em>no objects</em>"


def graph_svg(graph: SceneGraph4D, relations: list[Relation], colours: dict[int, tuple[int, int, int]]) -> str:
    """The objects of ``relations`` (:func:`featured_objects`) on a circle, one curved arrow per
    (subject, object) pair labelled with its predicates."""
    W, H = 560, 460
    objs = featured_objects(graph, relations)
    n = max(1, len(objs))
    R = 165 if n > 2 else 100
    pos = {
        o.object_id: (W / 2 + R * math.cos(2 * math.pi * i / n - math.pi / 2),
                      H / 2 + R * math.sin(2 * math.pi * i / n - math.pi / 2))
        for i, o in enumerate(objs)
    }
    pairs: dict[tuple[int, int], list[Relation]] = {}
    for r in relations:
        pairs.setdefault((r.subject_id, r.object_id), []).append(r)
    edges = []
    for (s, o), rels in pairs.items():
        (x1, y1), (x2, y2) = pos[s], pos[o]
        union = sorted({sp for r in rels for sp in r.spans})
        n_lines = len(rels)
        if s == o:  # self relation: a loop above the node, labels stacked upwards
            d = f"M{x1 - 8:.1f},{y1 - 20:.1f} C{x1 - 40:.1f},{y1 - 80:.1f} {x1 + 40:.1f},{y1 - 80:.1f} {x1 + 8:.1f},{y1 - 20:.1f}"
            lx, ly, anchor, top = x1, y1 - 72, "middle", y1 - 72 - 13 * n_lines
        else:
            dx, dy = x2 - x1, y2 - y1
            dist = math.hypot(dx, dy) or 1.0
            ux, uy = dx / dist, dy / dist
            px, py = -uy, ux  # the right-hand normal of the direction of travel
            # bend to the right of the direction of travel, so a->b and b->a do not overlap;
            # strongly when that is away from the centre, gently when towards it, where the
            # inner edges of all pairs meet
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            outward = (cx - W / 2) * px + (cy - H / 2) * py > 0
            bend = 50 if outward or n <= 2 else 16
            mx, my = cx + px * bend, cy + py * bend
            sx, sy = x1 + ux * 22, y1 + uy * 22
            ex, ey = x2 - ux * 24, y2 - uy * 24
            d = f"M{sx:.1f},{sy:.1f} Q{mx:.1f},{my:.1f} {ex:.1f},{ey:.1f}"
            # the label block sits outside the curve's apex, on the bend's side, so the two
            # directions of a pair never share a spot
            lx, ly = (sx + 2 * mx + ex) / 4 + px * 6, (sy + 2 * my + ey) / 4 + py * 6
            anchor = "start" if px > 0.35 else "end" if px < -0.35 else "middle"
            top = ly + 10 if py > 0.35 else ly - 13 * n_lines + 3 if py < -0.35 else ly - 6.5 * n_lines + 8
        labels = "".join(
            f"<tspan x='{lx:.1f}' dy='{0 if k == 0 else 13}' class='pred' data-spans='{spans_attr(r.spans)}'>"
            f"{html.escape(r.predicate)}</tspan>"
            for k, r in enumerate(rels)
        )
        edges.append(
            f"<g class='edge' data-subject='{s}' data-object='{o}' data-spans='{spans_attr(union)}'>"
            f"<path d='{d}' marker-end='url(#arrow)'/>"
            f"<text x='{lx:.1f}' y='{top:.1f}' text-anchor='{anchor}'>{labels}</text></g>"
        )
    nodes = []
    for o in objs:
        x, y = pos[o.object_id]
        tube = o.tube
        present = "" if tube is None else spans_attr(spans_from_mask(tube.present()))
        # the name goes radially outside the circle of nodes, away from the edges
        rx, ry = x - W / 2, y - H / 2
        rn = math.hypot(rx, ry) or 1.0
        tx, ty = x + 30 * rx / rn, y + 30 * ry / rn + 4
        anchor = "start" if rx / rn > 0.35 else "end" if rx / rn < -0.35 else "middle"
        nodes.append(
            f"<g class='node' data-obj='{o.object_id}' data-spans='{present}'>"
            f"<circle cx='{x:.1f}' cy='{y:.1f}' r='20' fill='{hex_colour(colours[o.object_id])}'/>"
            f"<text x='{tx:.1f}' y='{ty:.1f}' text-anchor='{anchor}'>{html.escape(o.majority_category())}"
            f" #{o.object_id}</text></g>"
        )
    return (
        f"<svg id='scene-graph' viewBox='0 0 {W} {H}' width='{W}' height='{H}' xmlns='http://www.w3.org/2000/svg'>"
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' markerHeight='7' "
        "orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z'/></marker></defs>"
        + "".join(edges) + "".join(nodes) + "</svg>"
    )
