"""The command line's contract for bad input, shared by the CLI tests."""

from attnkit.cli import main


def one_line_error(capsys, argv, expected):
    """``attnkit argv`` exits 2 with exactly one line on stderr, which contains ``expected``."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnkit: error: "), err
    assert expected in err[0], err[0]
