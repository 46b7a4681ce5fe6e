"""The Data Docs views the quality runs render with: Great Expectations' own Jinja page views,
whose compiled templates are kept for the life of the process.

GX builds a new Jinja environment for every Data Docs build, and compiling the templates a
result page uses (about 140: page, sections, tables) costs more than rendering the page; a
corpus build writes a site for every stage's output, so each one compiled them all again. The
compiled code of a template depends only on its source and the environment's options, which
are the same for every view GX makes here, so one in-memory bytecode cache (Jinja's own
mechanism, checked against each template's source) serves them all: the pages are rendered by
the same templates with the same filters as the stock views'.
"""
from __future__ import annotations

import jinja2
from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView


class ProcessBytecodeCache(jinja2.BytecodeCache):
    """Compiled templates in memory, by Jinja's key (template name and file); a template whose
    source changed no longer matches its checksum and is compiled again."""

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()

    def clear(self) -> None:
        self._code.clear()


COMPILED_TEMPLATES = ProcessBytecodeCache()


class CompiledPageView(DefaultJinjaPageView):
    """GX's result page view, compiling each template once per process."""

    def __init__(self, custom_styles_directory=None, custom_views_directory=None) -> None:
        super().__init__(custom_styles_directory, custom_views_directory)
        self.env.bytecode_cache = COMPILED_TEMPLATES


class CompiledIndexPageView(DefaultJinjaIndexPageView):
    """GX's index page view, compiling each template once per process."""

    def __init__(self, custom_styles_directory=None, custom_views_directory=None) -> None:
        super().__init__(custom_styles_directory, custom_views_directory)
        self.env.bytecode_cache = COMPILED_TEMPLATES
