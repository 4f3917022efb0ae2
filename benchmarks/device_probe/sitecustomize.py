"""Device probe for benchmarks/gpu_workflow.py: with this folder on PYTHONPATH and FB2_DEVICE_PROBE=1,
every Python process that imported torch writes one line to its stderr as it exits, which a rule's
``2> {log}`` puts in the rule's log:

    [device-probe] script=train_model.py cuda_initialized=True cuda_peak_mib=41.3 cuda_device=NVIDIA H200

The workflow's scripts do not log the device they computed on; this says it without editing them.
A CUDA context that allocated memory is proof that the job ran on the GPU; none means the CPU.

Python imports the first sitecustomize on its path, so this one runs the next one it finds as well
(a system's own, if any), to change nothing else.
"""

from __future__ import annotations

import atexit
import os
import sys


def _report() -> None:
    torch = sys.modules.get("torch")
    if torch is None:
        return
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "-"
    fields = [f"script={script}"]
    try:
        initialised = bool(torch.cuda.is_initialized())
        fields.append(f"cuda_initialized={initialised}")
        if initialised:
            peak = max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
            fields.append(f"cuda_peak_mib={peak / 2**20:.1f}")
            fields.append(f"cuda_device={torch.cuda.get_device_name(torch.cuda.current_device())}")
    except Exception as e:  # noqa: BLE001 - a probe must never change how a job ends
        fields.append(f"probe_error={type(e).__name__}")
    print("[device-probe] " + " ".join(fields), file=sys.stderr, flush=True)


def _chain() -> None:
    """Run the next sitecustomize.py on sys.path, if there is one."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        folder = os.path.abspath(entry or os.curdir)
        candidate = os.path.join(folder, "sitecustomize.py")
        if folder != here and os.path.isfile(candidate):
            with open(candidate, encoding="utf-8") as f:
                code = compile(f.read(), candidate, "exec")
            exec(code, {"__name__": "sitecustomize", "__file__": candidate})
            return


if os.environ.get("FB2_DEVICE_PROBE") == "1":
    atexit.register(_report)
_chain()
