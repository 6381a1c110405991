"""python -m jetspec_compile.runtime.profile ARTIFACT --prompts FILE ... (the same as `jetspec-compile profile`)."""

import argparse
import sys

from .cli import register

ap = argparse.ArgumentParser(prog="jetspec-compile")
register(ap.add_subparsers(dest="command"))
a = ap.parse_args(["profile", *sys.argv[1:]])
sys.exit(a.func(a))
