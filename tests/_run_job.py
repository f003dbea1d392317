"""Helper of tests/test_run.py: run a job (JSON file) on a real 2-worker LocalCluster.

``python _run_job.py JOB.json`` starts ``xfusion.cluster("local", n_workers=2)``, runs the job
and prints the report. The test kills this process group with SIGKILL mid-run and then resumes
the job in its own process.
"""

from __future__ import annotations

import json
import sys
import warnings

if __name__ == "__main__":
    warnings.simplefilter("ignore")
    import xfusion

    with open(sys.argv[1]) as fh:
        job = xfusion.Job.from_dict(json.load(fh))
    with xfusion.cluster("local", n_workers=2, threads_per_worker=1) as client:
        report = xfusion.run(job, client=client, progress=False)
    print(report, flush=True)
    sys.exit(0 if report.ok else 1)
