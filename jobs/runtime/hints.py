"""Lines a job prints for the user to run next: they must work as printed, and never show a credential."""

from __future__ import annotations

import os


def read_hint(output: str, method: str, options_text: str | None) -> str:
    """A Python line that reads the maps back as printed, in a Python started like the job: the
    readers follow $STORAGE_OPTIONS as the job did; options from --storage-options are named (an
    @file by its path, inline ones by value unless they look like credentials: this line is printed).
    ``output`` is already redacted; a local one is made absolute, to work from any folder."""
    from storage.io.fs import parse_storage_options, secret_option_keys

    shown = output if "://" in output else os.path.abspath(output)
    extra, note = "", ""
    if options_text and options_text.startswith("@"):
        extra = f", storage_options=storage.parse_storage_options({'@' + os.path.abspath(options_text[1:])!r})"
    elif options_text:
        options = parse_storage_options(options_text, "--storage-options")
        if secret_option_keys(options):
            note = "  # with your --storage-options in $STORAGE_OPTIONS (it holds credentials, not shown)"
        else:
            extra = f", storage_options={options!r}"
    return f"import storage; df = storage.read_maps({shown!r}, {method!r}{extra}){note}"
