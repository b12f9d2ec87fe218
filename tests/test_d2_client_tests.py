"""tools/d2_client_tests.py (detectron2's tests on the plugin's backbones; the full run is a step of .ci/run): it is
skipped, saying why, without a detectron2 source, and its verdict fails on each kind of problem it must catch."""
from conftest import load_tool

SUBSTITUTES = {"plugin:build_rb_resnet_backbone": 1, "plugin:build_rb_resnet_fpn_backbone": 1,
               "plugin:build_rb_retinanet_resnet_fpn_backbone": 1, "plugin:RBRes5ROIHeads": 1}


def _run(tests, totals):
    return {"tests": tests, "totals": totals}


def _clean_pair():
    base = _run({"a": {"outcome": "passed", "d2_resnets": 1}, "b": {"outcome": "passed"},
                 "c": {"outcome": "skipped", "reason": "CUDA unavailable"}}, {"d2_resnets": 1})
    plugin = _run({"a": {"outcome": "passed", "d2_resnets": 0, **SUBSTITUTES}, "b": {"outcome": "passed"},
                   "c": {"outcome": "skipped"}}, dict(SUBSTITUTES))
    return base, plugin


def test_skipped_without_a_source(monkeypatch, capsys):
    tool = load_tool("d2_client_tests")
    monkeypatch.delenv("RB_DETECTRON2_SOURCE", raising=False)
    assert tool.main([]) == 0
    assert "skipped: no detectron2 source" in capsys.readouterr().out


def test_verdict():
    tool = load_tool("d2_client_tests")
    base, plugin = _clean_pair()
    assert tool.compare(base, plugin) == []

    base, plugin = _clean_pair()
    plugin["tests"]["b"] = {"outcome": "failed", "reason": "AssertionError"}
    assert any(p.startswith("b: passes on detectron2's backbone, failed") for p in tool.compare(base, plugin))

    # detectron2's own ResNet in the substituted run: the step must not pass on it
    base, plugin = _clean_pair()
    plugin["tests"]["a"] = {"outcome": "passed", "d2_resnets": 1}
    plugin["totals"]["d2_resnets"] = 1
    problems = tool.compare(base, plugin)
    assert any("a: built a detectron2 ResNet in the baseline, nothing of the plugin's" in p for p in problems)
    assert any("constructed 1 detectron2 ResNet(s): ['a']" in p for p in problems)

    base, plugin = _clean_pair()
    del plugin["totals"]["plugin:RBRes5ROIHeads"]
    assert tool.compare(base, plugin) == ["never built in the substituted run: ['RBRes5ROIHeads']"]

    base, plugin = _clean_pair()
    del plugin["tests"]["b"]
    assert any("different tests" in p for p in tool.compare(base, plugin))
