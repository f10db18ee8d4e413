"""An eval's journal, ``episodes.jsonl``: finished episodes kept as they finish, so a stopped eval resumes.

``esper eval`` and ``esper frontier`` keep one each, keyed by fields of their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from esper_kernel.commands.evaldoc import EpisodeResult
from esper_kernel.infra.errors import EsperError
from esper_kernel.infra.numerics import differs, kind, numerics
from esper_kernel.settings.config import converter

__all__ = ["EVAL_KEY", "Journal"]


#: The key of an eval episode in a journal: its policy's name, seed and static width (None: a growing host).
EVAL_KEY = ("policy", "seed", "width")


class Journal:
    """``episodes.jsonl``: every finished episode, appended as it finishes.

    An eval that stops (a kill, a crash, a full disk) keeps what it had; the
    same command run again plays only the episodes still missing. The first
    line records the env config and lever selection, so episodes of a
    different configuration are never mixed in. Each episode line records
    where it was played (:mod:`esper_kernel.infra.numerics`): one recorded on
    another kind of machine is still used as recorded, and :meth:`elsewhere`
    counts those this eval used. ``esper frontier`` keeps its episodes in one
    too, keyed by ``fields`` of its own.
    """

    def __init__(
        self,
        path: Path | None,
        header: dict[str, Any],
        on_error: str = "stop",
        fields: tuple[str, ...] = EVAL_KEY,
        holds: str = "configuration",
    ) -> None:
        self.path, self.fields = path, fields
        #: The fault policy every episode played for this journal is played under.
        self.on_error = on_error
        self.done: dict[tuple[Any, ...], EpisodeResult] = {}
        #: Where each episode read from the file was played (None: a line written before that was kept).
        self._where: dict[tuple[Any, ...], dict[str, str] | None] = {}
        self._used: set[tuple[Any, ...]] = set()
        if path is None:
            return
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        # Journals written for a while kept where they were played in the header, not on each line: their
        # lines are taken as played there, a best guess for any a resume on another machine appended.
        head = json.loads(lines[0]) if lines else {}
        played = head.pop("numerics", None)
        if lines and head != header:
            raise EsperError(f"{path} holds episodes of another {holds}; pass another --out or delete the file")
        if not lines:  # a new file, or one left empty by a kill before its first line
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(header) + "\n", encoding="utf-8")
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # a line torn by a kill: that episode is simply played again
            key = tuple(rec[f] for f in fields)
            self.done[key] = converter.structure(rec["result"], EpisodeResult)
            self._where[key] = rec.get("numerics", played)

    def record(self, key: tuple[Any, ...], result: EpisodeResult) -> None:
        """Keep the episode ``key`` (one value per field) just played here, and append it to the file."""
        self.done[key] = result
        self._where.pop(key, None)
        if self.path is not None:
            line = {**dict(zip(self.fields, key, strict=True)), "numerics": numerics()}
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({**line, "result": converter.unstructure(result)}) + "\n")

    def use(self, key: tuple[Any, ...]) -> EpisodeResult:
        """The result of episode ``key``, played or read, for the document: where it ran counts in :meth:`elsewhere`."""
        self._used.add(key)
        return self.done[key]

    def elsewhere(self) -> list[dict[str, Any]]:
        """Each other kind of machine that episodes this eval used were played on, with their count."""
        found: dict[tuple[str, ...], dict[str, Any]] = {}
        for key in sorted(self._used & self._where.keys(), key=str):
            where = self._where[key]
            if where is not None and differs(where):
                found.setdefault(kind(where), {"numerics": where, "episodes": 0})["episodes"] += 1
        return list(found.values())
