"""Run one asym-st job in this process and ``kill -9`` it (SIGKILL, no cleanup) at a chosen moment.

Used by tests/training/test_faults.py, which starts it with ``python -m tests.training.die_during MODE ...`` from
the repository root and checks what the dead process left on disk. Nothing here catches the signal: SIGKILL cannot
be caught, so ``finally`` blocks, ``atexit`` hooks and context managers do not run, exactly as after an OOM kill
or a pre-empted node.

Modes:

``training CONFIG.yaml STEP``
    QED (:func:`asym_st.training.distill_query_tower`) from a YAML config; dies at the end of optimiser step
    ``STEP`` (a trainer callback), between two checkpoints.
``checkpoint CONFIG.yaml STEP``
    QED; dies while checkpoint-``STEP`` is being written: after its model, optimiser and scheduler files, before
    its RNG state and ``trainer_state.json``.
``save TEACHER OUT [--overwrite]``
    :func:`asym_st.save_asymmetric_model` of a model built from ``TEACHER``; dies after the first module's weights
    were written into the temporary folder, before the folder is renamed into place.
``json PATH``
    :func:`asym_st.utils.io.atomic_write_json` of ``{"version": "new", ...}`` to ``PATH``; dies halfway through
    writing the bytes.
"""

from __future__ import annotations

import os
import signal
import sys


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _train(config_path: str, step: int, during_checkpoint: bool) -> None:
    from transformers import Trainer, TrainerCallback

    from asym_st.training import QEDConfig, distill_query_tower

    callbacks = []
    if during_checkpoint:
        save_rng_state = Trainer._save_rng_state

        def dying_save_rng_state(self, output_dir):
            if self.state.global_step == step:
                print(f"dying while writing {output_dir}: {sorted(os.listdir(output_dir))}", flush=True)
                die()
            save_rng_state(self, output_dir)

        Trainer._save_rng_state = dying_save_rng_state
    else:

        class DieAtStep(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    print(f"dying at the end of step {step}", flush=True)
                    die()

        callbacks.append(DieAtStep())
    distill_query_tower(QEDConfig.from_yaml(config_path), callbacks=callbacks, evaluate=False)
    print("finished without dying", flush=True)


def _save(teacher: str, out: str, overwrite: bool) -> None:
    from sentence_transformers.sentence_transformer.modules import Pooling

    from asym_st import QueryTowerConfig, build_asymmetric_model, save_asymmetric_model

    model = build_asymmetric_model(teacher, QueryTowerConfig(layers=[0, 1]))

    # Modules are saved in order; the first Pooling comes right after the first Transformer's weights.
    def dying_save(self, output_path, *args, **kwargs):
        print(f"dying in Pooling.save({output_path})", flush=True)
        die()

    Pooling.save = dying_save
    save_asymmetric_model(model, out, overwrite=overwrite)
    print("finished without dying", flush=True)


def _json(path: str) -> None:
    # asym_st/utils/io.py alone: importing the asym_st package would load torch and sentence-transformers.
    import importlib.util
    from pathlib import Path

    source = Path(__file__).resolve().parents[2] / "asym_st" / "utils" / "io.py"
    spec = importlib.util.spec_from_file_location("asym_st_io", source)
    io_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(io_module)

    real_fdopen = os.fdopen

    class DyingHandle:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            os.fsync(self.handle.fileno())
            print(f"dying after writing {len(data) // 2} of {len(data)} bytes", flush=True)
            die()

    os.fdopen = lambda *args, **kwargs: DyingHandle(real_fdopen(*args, **kwargs))
    io_module.atomic_write_json(path, {"version": "new", "padding": "x" * 10_000})
    print("finished without dying", flush=True)


def main(argv: list[str]) -> None:
    mode, *rest = argv
    if mode in ("training", "checkpoint"):
        _train(rest[0], int(rest[1]), during_checkpoint=mode == "checkpoint")
    elif mode == "save":
        _save(rest[0], rest[1], overwrite="--overwrite" in rest[2:])
    elif mode == "json":
        _json(rest[0])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
