import subprocess
import sys

from avfast import cli


def test_info_prints_versions_and_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "triton", "PyAV", "DALI", "CUDA", "avfast._C"):
        assert name in out


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "info" in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "avfast.cli", "info"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "backends" in out.stdout


def test_bench_ratio_table():
    from avfast._bench import format_table, ratio_rows

    data = {"benchmarks": [
        {"name": "a", "group": "g", "stats": {"mean": 2.0}, "extra_info": {"provider": "torch", "baseline": True}},
        {"name": "b", "group": "g", "stats": {"mean": 0.5}, "extra_info": {"provider": "cpp", "items": 10, "unit": "clips"}},
    ]}
    rows = ratio_rows(data)
    fast = [r for r in rows if r["provider"] == "cpp"][0]
    assert fast["speedup"] == 4.0 and fast["throughput"] == "20.0 clips/s"
    assert "| g | cpp | 500.00 ms | 4.00x |" in format_table(rows)


def test_readme_backend_table_is_current():
    import pathlib

    from avfast import _docs

    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert _docs.render(readme) == readme, "README backend table is stale: run `python -m avfast._docs`"
