"""What the GPU image holds, seen from inside it without a GPU (gpu/image.sh pipes this file to
the image's own Python): prints one JSON object.

- `distributions`: the ONNX Runtime build(s) and NVIDIA wheels installed. The CPU and GPU builds
  install into the same package, so exactly one of them may be there.
- `providers`: what that ONNX Runtime was built with (CUDAExecutionProvider must be listed).
- `preloaded`: the CUDA runtime, cuBLAS and cuDNN libraries `onnxruntime.preload_dlls()` loads
  from the NVIDIA wheels, read back from /proc/self/maps: the libraries are in the image and load.
- `cuda_provider_unresolved`: what the dynamic loader cannot find for the CUDA provider library
  with the wheels' lib folders on its path (`ldd`). Only the driver (libcuda.so.1) may be
  missing: the NVIDIA container toolkit mounts it from a GPU host.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

WANTED = ("onnxruntime", "onnxruntime-gpu")
DRIVER = {"libcuda.so.1"}


def distributions() -> dict[str, str]:
    out = {}
    for d in md.distributions():
        name = (d.metadata["Name"] or "").lower()
        if name in WANTED or name.startswith("nvidia-"):
            out[name] = d.version
    return dict(sorted(out.items()))


def loaded_nvidia_libraries() -> list[str]:
    names = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if "/nvidia/" in path and ".so" in path:
            names.add(os.path.basename(path))
    return sorted(names)


def unresolved(lib: Path, nvidia_root: Path) -> list[str]:
    # CUDA 13's wheels share nvidia/cu13/lib; cuDNN has nvidia/cudnn/lib.
    libs = [*nvidia_root.glob("*/lib"), *nvidia_root.glob("*/*/lib")]
    dirs = sorted(str(p) for p in libs if p.is_dir())
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(dirs)}
    out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, env=env, check=True)
    return sorted(set(re.findall(r"^\s*(\S+) => not found", out.stdout, re.M)))


def main() -> None:
    report: dict = {"distributions": distributions()}
    import onnxruntime as ort

    report["onnxruntime"] = ort.__version__
    report["providers"] = ort.get_available_providers()
    capi = Path(ort.__file__).parent / "capi"
    provider = capi / "libonnxruntime_providers_cuda.so"
    report["cuda_provider_library"] = provider.is_file()
    try:
        ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
        report["preload_error"] = None
    except Exception as e:  # reported, judged by gpu/image.sh
        report["preload_error"] = repr(e)
    report["preloaded"] = loaded_nvidia_libraries()
    spec = importlib.util.find_spec("nvidia")
    roots = [p for p in (spec.submodule_search_locations or []) if p] if spec else []
    report["nvidia_root"] = roots[0] if roots else None
    if provider.is_file() and roots:
        report["cuda_provider_unresolved"] = unresolved(provider, Path(roots[0]))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
