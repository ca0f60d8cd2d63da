"""The compiled extension, the pure-torch fallback and the custom-op test helper."""
import subprocess
import sys

import pytest
import torch

import helpers
from avfast import _ext


def test_extension_built_and_reports_its_build():
    assert _ext.load_error() is None, _ext.load_error()
    info = _ext.build_info()
    assert info["cpp"] == "1"
    assert info["cuda"] == ("0" if torch.version.cuda is None else info["cuda"])
    assert _ext.op_missing_reason("no_such_kernel").startswith("C++ op avfast_C::no_such_kernel")


def test_package_imports_without_extension_with_one_warning(tmp_path):
    # Hide avfast._C: the package must import, warn once, and report the reason.
    code = (
        "import sys, warnings\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'avfast._C': raise ImportError('hidden for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    import avfast, avfast.ops\n"
        "    from avfast import _ext\n"
        "    r1 = _ext.op_missing_reason('x'); r2 = _ext.op_missing_reason('y')\n"
        "    avfast.backend_table()\n"
        "assert 'hidden for the test' in r1, r1\n"
        "msgs = [str(x.message) for x in w if 'avfast._C' in str(x.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@torch.library.custom_op("avfast_test::scaled_add", mutates_args=())
def _scaled_add(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    return x + alpha * y


@_scaled_add.register_fake
def _(x, y, alpha):
    return torch.empty_like(x)


def _backward(ctx, grad):
    return grad, grad * ctx.alpha, None


def _setup(ctx, inputs, output):
    ctx.alpha = inputs[2]


_scaled_add.register_autograd(_backward, setup_context=_setup)


def test_check_custom_op_helper_passes_a_correct_op():
    x, y = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    helpers.check_custom_op(torch.ops.avfast_test.scaled_add.default, (x, y, 0.5))


def test_check_custom_op_helper_catches_a_wrong_fake():
    @torch.library.custom_op("avfast_test::bad_fake", mutates_args=())
    def bad(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @bad.register_fake
    def _(x):
        return x.new_empty(x.shape[0] + 1)

    with pytest.raises(Exception):
        helpers.check_custom_op(torch.ops.avfast_test.bad_fake.default, (torch.randn(3),))
