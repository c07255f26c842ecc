"""tests/forkrun.py behaves as `python` does for the documented-commands test: exit status, output, `__name__`,
`sys.argv`, `sys.path[0]`, the working folder and stdin."""

import os

from forkrun import Forkrun


def test_children_behave_like_a_fresh_interpreter(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "sibling.py").write_text("VALUE = 'found beside the script'\n")
    (tmp_path / "pkg" / "script.py").write_text(
        "import os, sys\n"
        "from sibling import VALUE\n"
        "print(__name__, sys.argv[1:], VALUE, os.getcwd(), repr(sys.stdin.read()))\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    (tmp_path / "pkg" / "broken.py").write_text("import json\nprint('before')\njson.dumps(undefined_name)\n")
    (tmp_path / "mod.py").write_text("import sys\nprint('module', __name__, sys.argv)\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    with Forkrun(env, tmp_path) as run:
        ok = run([str(tmp_path / "pkg" / "script.py"), "0"], work)
        assert ok.returncode == 0
        assert ok.stderr == f"__main__ ['0'] found beside the script {work} ''\n"
        assert run([str(tmp_path / "pkg" / "script.py"), "3"], work).returncode == 3
        broken = run([str(tmp_path / "pkg" / "broken.py")], work)
        assert broken.returncode == 1
        assert "before" in broken.stderr and "NameError: name 'undefined_name' is not defined" in broken.stderr
        module = run(["-m", "mod", "--flag"], work)
        assert (module.returncode, module.stderr) == (0, f"module __main__ ['{tmp_path / 'mod.py'}', '--flag']\n")
        snippet = run(["-c", "import sys; print(__name__); sys.exit('failed: message')"], work)
        assert (snippet.returncode, snippet.stderr) == (1, "__main__\nfailed: message\n")
        # a child's imports and globals do not leak into the next child
        assert run(["-c", "import sys; assert 'sibling' not in sys.modules"], work).returncode == 0
