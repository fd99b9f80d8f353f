#!/usr/bin/env bash
# rank_failure.sh on test_parallel's stepping job: the same fault checks without a model file
# or the generate command.
exec bash "$(dirname "${BASH_SOURCE[0]}")/rank_failure.sh" --harness
