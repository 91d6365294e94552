"""``show_progress``: a tqdm bar over the batch on CASO, SmoothCASO and sweep; silent by default."""

import pytest
import torch

from captum_ext import CASO, SmoothCASO

from ._nets import relu_mlp


@pytest.mark.parametrize("call", ["attribute", "sweep", "smooth"])
def test_show_progress_draws_a_bar_only_when_asked(call, capsys):
    model = relu_mlp(seed=0)
    x = torch.randn(4, 12, dtype=torch.float64)
    caso = SmoothCASO(model, nt_samples=2) if call == "smooth" else CASO(model)

    def run(**kw):
        torch.manual_seed(0)  # SmoothCASO's noise
        if call == "sweep":
            return caso.sweep(x, [1e-3, 1e-2], internal_batch_size=2, **kw)
        return caso.attribute(x, lambda1=1e-3, internal_batch_size=2, **kw)

    quiet = run()
    assert capsys.readouterr().err == ""
    loud = run(show_progress=True)
    err = capsys.readouterr().err
    assert "CASO" in err and "/4 [" in err  # the class name and the batch size
    torch.testing.assert_close(loud, quiet)


def test_show_progress_must_be_a_bool():
    with pytest.raises(TypeError, match="show_progress"):
        CASO(relu_mlp()).attribute(torch.randn(2, 12, dtype=torch.float64), show_progress="yes")
