#!/bin/bash
# wxens batch job: stage {{stage}} of workflow {{workflow_comment}}
# Each array task runs one shard; the job name, output file and dependency are given on the sbatch
# command line by `wxens submit` (never interpolated into this script).
{{sbatch_lines}}
set -euo pipefail
cd {{cwd}}
{{env_lines}}
exec {{command}} run {{workflow}} --run-dir {{run_dir}} --stage {{stage}}{{shard_arg}}
