"""The chained inference's turns as HTML: what the model was asked, what it answered, what was read
from the answer and the problems met (``meta["chain"]`` of a prediction made with ``--mode chain``)."""

from __future__ import annotations

import html
from typing import Any

from psg4d.data.schema import SceneGraph4D

_MAX_WINDOWS = 20  # a long streamed video lists the rest as a count
_TITLES = {"describe": "1. Describe and name the objects", "pairs": "2. Interacting pairs",
           "relation": "3. The relation of each pair", "span": "4. When each relation holds"}


def _item(step: str, item: Any) -> str:
    if step == "describe" and isinstance(item, dict):
        how = item.get("source", "")
        said = f" (the model said {item['model_category']!r})" if "model_category" in item else ""
        return (f"<b>{html.escape(str(item.get('index')))}</b> {html.escape(str(item.get('description', '')))}"
                f" &rarr; <b>{html.escape(str(item.get('category')))}</b> <span class='oid'>object"
                f" {html.escape(str(item.get('object_id')))}; named by {html.escape(how)}{html.escape(said)}</span>")
    return html.escape(" ".join(str(x) for x in item) if isinstance(item, (list, tuple)) else str(item))


def chain_html(pred: SceneGraph4D) -> str:
    """The turns of ``pred``'s chained inference as an HTML section ("" when it has none)."""
    chain = (pred.meta or {}).get("chain")
    if not isinstance(chain, dict):
        return ""
    if isinstance(chain.get("windows"), list):  # a streamed video: one chain per window
        turns = [(f"window from frame {w.get('first_frame')}", w.get("steps")) for w in chain["windows"]
                 if isinstance(w, dict)]
    else:
        turns = [("", chain.get("steps"))]
    turns = [(label, steps) for label, steps in turns if isinstance(steps, list)]
    if not turns:
        return ""
    out = ["<div class='panel chain' style='margin-top:16px'>",
           "<h2>Chained inference <span class='oid'>(each answer is read by the next turn)</span></h2>"]
    for label, steps in turns[:_MAX_WINDOWS]:
        if label:
            out.append(f"<h3>{html.escape(label)}</h3>")
        out += _steps_html(steps)
    if len(turns) > _MAX_WINDOWS:
        out.append(f"<p class='oid'>{len(turns) - _MAX_WINDOWS} more windows in the prediction file</p>")
    out.append("</div>")
    return "\n".join(out)


def _steps_html(steps: list) -> list[str]:
    out = []
    for rec in steps:
        if not isinstance(rec, dict):
            continue
        step = str(rec.get("step", "?"))
        stopped = "" if rec.get("stopped") == "eos" else " <span class='problem'>(cut: no end of answer)</span>"
        out.append(f"<h3>{html.escape(_TITLES.get(step, step))}{stopped}</h3>")
        out.append(f"<div class='oid'>prompt: {html.escape(str(rec.get('prompt', '')))}</div>")
        out.append(f"<pre class='answer'>{html.escape(str(rec.get('answer', '')))}</pre>")
        items = rec.get("items") or []
        if items:
            out.append("<ul>" + "".join(f"<li>{_item(step, it)}</li>" for it in items) + "</ul>")
        for problem in rec.get("problems") or []:
            out.append(f"<div class='problem'>{html.escape(str(problem))}</div>")
    return out
