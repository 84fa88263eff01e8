"""Start-up and shell completion: `signer --help` and `approver --help` load no
command's module, their summaries are the commands' own, and `completion` scripts
complete in a real shell.

`signer.cli.main` lists its subcommands from a table, so that `--help` answers
without importing the client, the server or grpc; each summary there must stay
the command's own first sentence. `signer completion bash|zsh|fish` and
`approver completion ...` print click's completion scripts; bash runs one and
completes a command name with it.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from approver.cli import COMMANDS as APPROVER_COMMANDS
from signer.cli.main import COMMANDS
from testbed.commands import run

pytestmark = pytest.mark.sqlite_only("no server: the CLI's own start-up")
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("table", [COMMANDS, APPROVER_COMMANDS], ids=["signer", "approver"])
def test_every_summary_is_its_commands_own(table: dict[str, tuple[str, str, str]]) -> None:
    """Each row of COMMANDS names a command of that name whose first sentence it is."""
    for name, (module, attribute, summary) in table.items():
        command = getattr(importlib.import_module(module), attribute)
        assert command.name == name
        assert command.get_short_help_str(limit=1000) == summary, name


@pytest.mark.parametrize("group", ["signer.cli.main", "approver.cli"])
def test_help_loads_no_command_module(group: str) -> None:
    """`signer --help` and `approver --help` (and `version`) import no command module,
    grpc, rich or the server."""
    probe = (
        "import sys\n"
        f"from {group} import main\n"
        "for args in (['--help'], ['version']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in sys.modules if m.startswith(('signer.cli.requester', "
        "'signer.cli.operator', 'approver.commands', 'approver.policy', 'signer.server', "
        "'signer.client', 'grpc', 'rich'))]\n"
        "print('LOADED', sorted(heavy))\n"
    )
    p = run([sys.executable, "-c", probe])
    assert "Commands:" in p.stdout and "version" in p.stdout
    assert p.stdout.strip().endswith("LOADED []"), p.stdout[-400:]


@pytest.mark.parametrize("prog", ["signer", "approver"])
def test_bash_completes_a_command_name_with_the_printed_script(prog: str) -> None:
    """The bash script `PROG completion bash` prints, sourced in bash, completes
    `PROG si` / `PROG ap` to the command that starts so."""
    typed, expected = ("si", "sign") if prog == "signer" else ("ap", "approve")
    script = (
        f'eval "$({BIN / prog} completion bash)"\n'
        f"COMP_WORDS=({BIN / prog} {typed}); COMP_CWORD=1\n"
        f"_{prog}_completion {BIN / prog}\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert expected in p.stdout.split(), p.stdout


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_name_the_program(shell: str) -> None:
    """The zsh and fish scripts are click's, for the program's own completion variable."""
    for prog in ("signer", "approver"):
        p = run([str(BIN / prog), "completion", shell])
        assert f"_{prog.upper()}_COMPLETE={shell}_complete" in p.stdout
