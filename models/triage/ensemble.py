"""One ONNX graph that averages the logits of the cross-validation fold networks (onnx only; no torch).

The shipped model is the ensemble of the k fold networks of the out-of-fold (OOF) protocol: each member is
a fold's ONNX export (``image`` -> ``referable_probability``, sigmoid last, possibly followed by the
quantise/dequantise pair of an int8 QDQ graph). :func:`merge` cuts every member at the input of its final
``Sigmoid`` (its logit), renames its tensors with a ``fold<F>/`` prefix, feeds all members the same
``image`` input and ends with ``Mean`` of the logits and one ``Sigmoid``: the mean of logits the issue
asks for, in one file that ``gateway model install`` checks and the gateway runs like any single model.

The merge is a pure rewrite of the members' graphs (no weights are touched, no randomness), so the same
member files always give a byte-identical ensemble; ``export.py`` builds it, a test checks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import compose, helper

INPUT = "image"
OUTPUT = "referable_probability"
LOGIT = "ensemble_logit"
# Ops that may follow the member's final Sigmoid: the activation QDQ pair of a static int8 graph.
_TRAILING = ("QuantizeLinear", "DequantizeLinear")


class MemberShapeError(ValueError):
    """A member graph does not end in ``Sigmoid`` (plus optional Q/DQ) on one ``image`` input."""

    def __init__(self, member: int, reason: str) -> None:
        super().__init__(f"ensemble member {member}: {reason}")
        self.member = member
        self.reason = reason


def member_logits(model: onnx.ModelProto, index: int) -> tuple[onnx.ModelProto, str]:
    """``model`` cut at the input of its final Sigmoid, tensors prefixed ``fold<index>/``; and the logit's name.

    Raises:
        MemberShapeError: the graph has not one input named ``image`` and one output produced by a Sigmoid.
    """
    graph = model.graph
    if [i.name for i in graph.input] != [INPUT] or len(graph.output) != 1:
        raise MemberShapeError(index, f"expected one input {INPUT!r} and one output")
    producers = {out: node for node in graph.node for out in node.output}
    node = producers.get(graph.output[0].name)
    dropped: list[onnx.NodeProto] = []
    while node is not None and node.op_type in _TRAILING:
        dropped.append(node)
        node = producers.get(node.input[0])
    if node is None or node.op_type != "Sigmoid":
        raise MemberShapeError(index, "the output is not produced by a Sigmoid")
    dropped.append(node)
    logit = node.input[0]
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    kept = [n for n in cut.graph.node if not any(n.output == d.output for d in dropped)]
    del cut.graph.node[:]
    cut.graph.node.extend(kept)
    del cut.graph.output[:]
    cut.graph.output.append(helper.make_tensor_value_info(logit, onnx.TensorProto.FLOAT, ["batch", 1]))
    prefix = f"fold{index}/"
    return compose.add_prefix(cut, prefix, rename_inputs=False), prefix + logit


def merge(members: Sequence[onnx.ModelProto]) -> onnx.ModelProto:
    """One model: ``image`` -> sigmoid(mean over members of their logit) as ``referable_probability`` (N, 1)."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    cut = [member_logits(m, i) for i, m in enumerate(members)]
    nodes = [n for m, _ in cut for n in m.graph.node]
    nodes += [
        helper.make_node("Mean", [logit for _, logit in cut], [LOGIT], name="ensemble/mean_of_logits"),
        helper.make_node("Sigmoid", [LOGIT], [OUTPUT], name="ensemble/sigmoid"),
    ]
    used = {name for n in nodes for name in n.input}
    # The members' output Q/DQ parameters are no longer read; leaving them makes onnxruntime warn at load.
    initializers = [t for m, _ in cut for t in m.graph.initializer if t.name in used]
    graph = helper.make_graph(
        nodes,
        "referable_dr_ensemble",
        [members[0].graph.input[0]],
        [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["batch", 1])],
        initializers,
        doc_string=f"mean of the logits of {len(members)} cross-validation fold networks, then sigmoid",
    )
    opsets = {o.domain: o.version for m in members for o in m.opset_import}
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="models.triage.ensemble",
    )
    model.ir_version = max(m.ir_version for m in members)
    helper.set_model_props(model, {"ensemble_members": str(len(members)), "combine": "mean of logits"})
    onnx.checker.check_model(model)
    return model


def build(member_paths: Sequence[Path], out: Path) -> Path:
    """Merge the member ONNX files (in the given order) into ``out``; return ``out``."""
    onnx.save(merge([onnx.load(str(p)) for p in member_paths]), str(out))
    return out


def member_count(path: Path) -> int:
    """How many networks the ensemble file at ``path`` averages (1 for a plain model)."""
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return int(props.get("ensemble_members", "1"))
