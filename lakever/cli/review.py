"""Commands for evaluations and segments."""

from __future__ import annotations

from typing import Annotated, Any

import typer

import lakever as lv
from lakever.cli import _output as o
from lakever.cli.app import Json, Uri, Verbose, Yes, _guard, app, open_dataset
from lakever.evaluation import SUMMARY_KEYS

segment_app = typer.Typer(
    help="Named collections of frames, labels and predictions, frozen when added.",
    no_args_is_help=True,
)
app.add_typer(segment_app, name="segment")

_LABELS = {
    "AP": "AP @[IoU=0.50:0.95 | area=all | maxDets=100]",
    "AP50": "AP @[IoU=0.50 | area=all | maxDets=100]",
    "AP75": "AP @[IoU=0.75 | area=all | maxDets=100]",
    "APs": "AP @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "APm": "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "APl": "AP @[IoU=0.50:0.95 | area=large | maxDets=100]",
    "AR1": "AR @[IoU=0.50:0.95 | area=all | maxDets=1]",
    "AR10": "AR @[IoU=0.50:0.95 | area=all | maxDets=10]",
    "AR100": "AR @[IoU=0.50:0.95 | area=all | maxDets=100]",
    "ARs": "AR @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "ARm": "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "ARl": "AR @[IoU=0.50:0.95 | area=large | maxDets=100]",
}


def _ids(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@app.command("eval")
@_guard
def eval_cmd(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    set_name: Annotated[str, typer.Argument(metavar="SET", help="Inference set.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    against: Annotated[
        str | None, typer.Option(help="Labels of this ref (default: the set's pin).")
    ] = None,
    worst: Annotated[int, typer.Option(help="How many of the worst classes to list.")] = 5,
    no_store: Annotated[
        bool, typer.Option("--no-store", help="Do not record it (read-only credentials).")
    ] = False,
) -> None:
    """Evaluate an inference set (COCO bbox) against its pinned labels, and record it."""
    ds = open_dataset(uri, dataset)
    ev = ds.evaluate(set_name, against=against, store=not no_store)
    if json_out:
        o.emit_json(
            {
                "evaluation_id": ev.id,
                "set_name": ev.set_name,
                "against": ev.against.seq,
                "predictions_seq": ev.predictions_seq,
                "summary": ev.summary,
                "per_class": ev.per_class.to_dicts(),
            }
        )
        return
    o.out.print(
        f"evaluation {ev.id}: {set_name} (predictions at commit {ev.predictions_seq}) against "
        f"the labels of commit {ev.against.seq}",
        markup=False,
    )
    o.table(
        None,
        ["metric", "", "value"],
        [(k, _LABELS[k], f"{ev.summary[k]:.3f}") for k in SUMMARY_KEYS],
    )
    ranked = ev.per_class.filter(ev.per_class["AP"] >= 0).sort("AP").head(worst)
    o.table(
        f"worst {ranked.height} classes by AP",
        ranked.columns,
        ([f"{v:.3f}" if isinstance(v, float) else v for v in r] for r in ranked.iter_rows()),
    )


@app.command("evals")
@_guard
def evals_cmd(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    set_name: Annotated[str | None, typer.Option("--set", help="Only this inference set.")] = None,
) -> None:
    """List recorded evaluations, newest first."""
    rows = open_dataset(uri, dataset).evaluations(set_name)
    if json_out:
        o.emit_json(rows.drop("per_class").to_dicts())
        return
    o.table(
        None,
        ["evaluation", "set", "against", "predictions", "AP", "AP50", "AR100", "when (UTC)"],
        [
            (r["evaluation_id"], r["set_name"], r["against_seq"], r["predictions_seq"],
             f"{r['AP']:.3f}", f"{r['AP50']:.3f}", f"{r['AR100']:.3f}", o.when(r["created_at"]))
            for r in rows.iter_rows(named=True)
        ],
    )  # fmt: skip


Ids = Annotated[str | None, typer.Option(help="Comma-separated ids.")]


def _members(
    frame_ids: str | None, label_ids: str | None, predictions: list[str] | None
) -> dict[str, Any]:
    preds: dict[str, list[str]] = {}
    for item in predictions or []:
        name, sep, keys = item.partition("=")
        if not sep or not name:
            raise lv.InvalidInputError(f"--predictions must be SET=id,id,...; got {item!r}")
        preds.setdefault(name, []).extend(_ids(keys))
    return {"frame_ids": _ids(frame_ids), "label_ids": _ids(label_ids), "predictions": preds}


Preds = Annotated[
    list[str] | None, typer.Option("--predictions", help="SET=id,id,... (repeatable).")
]


@segment_app.command("create")
@_guard
def segment_create(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="Segment name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    frame_ids: Ids = None,
    label_ids: Ids = None,
    predictions: Preds = None,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
) -> None:
    """Create a segment; its elements are frozen at HEAD."""
    ds = open_dataset(uri, dataset)
    seg = ds.create_segment(
        name, **_members(frame_ids, label_ids, predictions), description=description
    )
    _say_segment(seg, json_out, f"created segment {seg.name!r}")


def _say_segment(seg: lv.Segment, json_out: bool, text: str) -> None:
    elements = seg.elements()
    if json_out:
        o.emit_json(
            {
                "name": seg.name,
                "description": seg.description,
                "state": seg.state,
                "created_at": seg.created_at,
                "creator": seg.creator,
                "elements": elements.to_dicts(),
            }
        )
        return
    o.out.print(f"{text} ({seg.state}): {elements.height} element(s)", markup=False)


@segment_app.command("list")
@_guard
def segment_list(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """List segments."""
    rows = open_dataset(uri, dataset).segments()
    if json_out:
        o.emit_json(rows.to_dicts())
        return
    o.table(
        None,
        ["name", "state", "elements", "created (UTC)", "creator", "description"],
        [
            (r["name"], r["state"], r["elements"], o.when(r["created_at"]), r["creator"],
             r["description"])
            for r in rows.iter_rows(named=True)
        ],
    )  # fmt: skip


@segment_app.command("show")
@_guard
def segment_show(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="Segment name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Show a segment's elements and which of them changed since they were added."""
    seg = open_dataset(uri, dataset).segment(name)
    outdated = seg.outdated()
    if json_out:
        o.emit_json(
            {
                "name": seg.name,
                "state": seg.state,
                "elements": seg.elements().to_dicts(),
                "outdated": outdated.to_dicts(),
            }
        )
        return
    o.out.print(f"segment {seg.name!r} ({seg.state}): {seg.description}", markup=False)
    o.table(
        "elements",
        ["table", "key", "frozen at commit"],
        seg.elements().select("table", "key", "commit_seq").iter_rows(),
    )
    if not outdated.is_empty():
        o.table(
            "changed since added",
            ["table", "key", "change", "changed columns"],
            [(r["table"], r["key"], r["change"], ", ".join(r["changed"]))
             for r in outdated.iter_rows(named=True)],
        )  # fmt: skip


def _membership(verb: str, help_text: str, done: str) -> None:
    """Register `segment add` or `segment remove` (the same options, the other method)."""

    def command(
        dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
        name: Annotated[str, typer.Argument(metavar="NAME", help="Segment name.")],
        uri: Uri = None,
        json_out: Json = False,
        verbose: Verbose = False,
        frame_ids: Ids = None,
        label_ids: Ids = None,
        predictions: Preds = None,
    ) -> None:
        seg = open_dataset(uri, dataset).segment(name)
        n = getattr(seg, verb)(**_members(frame_ids, label_ids, predictions))
        _say_segment(seg, json_out, done.format(n=n, name=seg.name))

    command.__doc__ = help_text
    command.__name__ = f"segment_{verb}"
    segment_app.command(verb)(_guard(command))


_membership(
    "add",
    "Add elements, frozen at HEAD (adding one again refreshes it).",
    "added {n} element(s) to {name!r}",
)
_membership("remove", "Take elements out of a segment.", "removed {n} element(s) from {name!r}")


@segment_app.command("state")
@_guard
def segment_state(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="Segment name.")],
    state: Annotated[str, typer.Argument(metavar="STATE", help="open, resolved or archived.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Set a segment's state."""
    seg = open_dataset(uri, dataset).segment(name)
    seg.set_state(state)
    _say_segment(seg, json_out, f"segment {seg.name!r} is now {state}")


@segment_app.command("delete")
@_guard
def segment_delete(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="Segment name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    yes: Yes = False,
) -> None:
    """Delete a segment (needs --yes)."""
    if not yes:
        raise lv.InvalidInputError(f"deleting segment {name!r} needs --yes")
    open_dataset(uri, dataset).delete_segment(name)
    if json_out:
        o.emit_json({"deleted": name})
    else:
        o.out.print(f"deleted segment {name!r}", markup=False)
