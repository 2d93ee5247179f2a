"""The README's complete usage example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_nnx_usage_example_runs(capsys):
    text = README.read_text()
    section = text.split("**Flax NNX**", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    model = namespace["model"]
    for i, radius in ((0, 60.0), (1, 30.0)):
        assert float(abs(model.layers[i].kernel[...]).sum()) <= radius * (1 + 1e-5)
    assert "input pixels removed" in capsys.readouterr().out
