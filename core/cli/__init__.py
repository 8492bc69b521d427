"""`edgefm` command line (temporary: being split per command group)."""
from edgefm.cli.app import *  # noqa
from edgefm.cli.app import _compile_settings, main  # noqa
