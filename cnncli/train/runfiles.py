"""What a training says and writes as it starts: the run directory's description of the run
(config.yaml, split.json, data.json, init.json), status.json saying "running", and the console
lines that go with them. Only `write_start_files` touches a file; the loop calls it from its
explicit start step (`Training.session`), never while a Training is being constructed.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from cnncli.rundir import RunDir
from cnncli.train.environment import run_environment


def write_start_files(run: RunDir, setup, console, *, resumed: bool, start_step: int,
                      topology: dict[str, Any]) -> None:
    """Describe the run in its directory and claim it: status "running" with this process's pid and host.

    A resume rewrites config.yaml only where it changed and leaves init.json (the first start's
    fine-tuning report) as it was."""
    data, cfg, spe = setup.data, setup.cfg, setup.steps_per_epoch
    text = cfg.to_yaml()
    if not (resumed and run.config.is_file() and run.config.read_text() == text):
        run.write_text("config.yaml", text)
    run.write_json("split.json", data.split_info)
    run.write_json("data.json", {"source": data.source, "path": data.path, "description": data.description,
                                 "class_names": data.class_names, "image_shape": list(data.image_shape),
                                 "mean": data.mean, "std": data.std, "stats_from": data.stats_from,
                                 "sizes": data.sizes(), "notes": data.notes})
    for note in data.notes:
        console.print(f"note: {note}")
    report = setup.init_report
    if report and not resumed:
        run.write_json("init.json", report)
        for line in init_lines(report):
            console.print(line)
    if resumed:
        console.print(f"resuming {run.path} from step {start_step} (epoch {start_step / spe:.2f})")
    run.set_status("running", started=time.strftime("%Y-%m-%dT%H:%M:%S"), pid=os.getpid(),
                   host=socket.gethostname(), total_steps=setup.total_steps, steps_per_epoch=spe,
                   model=cfg.model.name, dataset=cfg.data.source, reason=None, cluster=topology,
                   environment=run_environment())


def init_lines(report: dict[str, Any]) -> list[str]:
    """The console lines of a fine-tuning start: the parameter groups loaded, re-initialised and frozen."""
    lines = []
    for key, label in (("loaded", "loaded from " + str(report.get("source"))),
                       ("reinitialised", "re-initialised"), ("frozen", "frozen")):
        groups = report.get(key)
        if groups:
            shown = ", ".join(groups[:6]) + (f" and {len(groups) - 6} more" if len(groups) > 6 else "")
            lines.append(f"{label}: {len(groups)} group(s): {shown}")
    return lines


def opening_lines(setup, topology: dict[str, Any]) -> list[str]:
    """The console's first lines of a run: model, data, steps, devices, the global batch."""
    sizes, devices, spe = setup.data.sizes(), setup.mesh.devices, setup.steps_per_epoch
    cfg, total = setup.cfg, setup.total_steps
    return [f"[bold]{cfg.model.name}[/] on {cfg.data.source}: {sizes['train']} train / {sizes['val']} val "
            f"/ {sizes['test']} test images {setup.data.image_shape}, {total} steps "
            f"({total / spe:.3g} epochs of {spe}), {devices.size} x "
            f"{devices.flat[0].device_kind} ({devices.flat[0].platform})",
            f"{topology['processes']} process(es) x {topology['local_devices']} device(s) = {topology['devices']} "
            f"device(s); global batch {topology['global_batch']}, {topology['per_device_batch']} per device"]


def state_memory_line(topology: dict[str, Any]) -> str:
    """The console line of the train state's size on the fullest device (`state_bytes_per_device`)."""
    how = "split over the devices" if topology["shard_params"] else "a full copy on each device"
    return f"train state: {topology['state_bytes_per_device'] / 2**20:.2f} MiB per device ({how})"


def topology_note(before: dict | None, now: dict[str, Any]) -> str | None:
    """A resume on another number of processes or devices keeps the global batch and its order: the note
    that says so, or None where the checkpoint's cluster matches this one."""
    if not before or (before.get("processes"), before.get("devices")) == (now["processes"], now["devices"]):
        return None
    return (f"note: the checkpoint was written by {before.get('processes')} process(es) on {before.get('devices')} "
            f"device(s), this run has {now['processes']} on {now['devices']}: the global batch "
            f"({now['global_batch']}) and the order of examples stay the same, {now['per_device_batch']} per device")
