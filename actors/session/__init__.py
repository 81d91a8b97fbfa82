"""SessionActor: runs one session, one message per step, persist-then-proceed.

It owns its :class:`SessionState`; nothing else mutates it. Each step ends in a
checkpoint sent to the PersistenceActor, and the next step starts only when the
acknowledgement (:class:`CheckpointPersisted`) arrives, so ``Pause``, ``Cancel`` and
status queries interleave between steps and nothing a client saw as done can be lost.

The package's rooms, each layer built on the one before: :mod:`.base` (the settings and
the attributes every layer shares), :mod:`.events` (events emitted, snapshots published),
:mod:`.checkpoints` (a checkpoint built, sent, acknowledged), :mod:`.control` (pause,
cancel, retries, the session's end), :mod:`.steps` (what each step does), and
:mod:`.actor` (the actor: lifecycle hooks and mailbox).
"""

from actors.session.actor import SessionActor
from actors.session.base import SessionSettings

__all__ = ["SessionActor", "SessionSettings"]
