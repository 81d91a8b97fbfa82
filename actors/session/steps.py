"""The steps of a session, one per message: what each phase does and the checkpoint it ends in.

Each step calls the pipeline (through :class:`Providers`), emits what it did, and ends in
one checkpoint; :meth:`SessionSteps._run_step` picks the step the state's phase asks for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.session.control import SessionControl
from actors.state import Phase
from domain import CheckpointType, EventType, ProcessingStep, SessionStatus, isoformat
from pipeline.analysis import EmotionalMoment
from pipeline.images import folder_sync_deferred, image_filename
from pipeline.manuscripts import Chapter
from pipeline.prompts import IllustrationPrompt
from storage.atomic import make_dirs
from storage.records import ImageRecord


class SessionSteps(SessionControl):
    """The spec's steps, from the session's start to its completion."""

    def _run_step(self) -> None:
        state = self.state
        match state.phase:
            case Phase.START:
                # The basics travel in the first checkpoint, so its file alone can rebuild
                # the session.
                self._checkpoint(
                    CheckpointType.SESSION_START,
                    ProcessingStep.INITIALIZING,
                    data={
                        "manuscript_id": state.manuscript_id,
                        "external_session_id": state.external_session_id,
                        "style_config": state.style_config,
                        "max_emotional_moments": state.max_emotional_moments,
                        "start_from_chapter": state.start_from_chapter,
                        "started_at": isoformat(state.started_at),
                    },
                )
            case Phase.LOAD:
                self._load_manuscript()
            case Phase.CHAPTER_START:
                self._start_chapter()
            case Phase.ANALYZE:
                self._analyze_chapter()
            case Phase.PROMPTS:
                self._generate_prompts()
            case Phase.IMAGES:
                self._generate_next_image()
            case Phase.CHAPTER_DONE:
                self._complete_chapter()
            case Phase.COMPLETE:
                self._complete_session()
            case Phase.DONE:
                self._finish(SessionStatus.COMPLETED)

    def _load_manuscript(self) -> None:
        first = self.state.start_from_chapter
        numbers = [c.number for c in self.manuscript.chapters if c.number >= first]
        self._emit_step(0, "processing")
        self._emit_log(
            "info", f"Loaded manuscript '{self.manuscript.title}' ({len(numbers)} chapters)"
        )
        self._checkpoint(
            CheckpointType.MANUSCRIPT_LOADED,
            ProcessingStep.LOADING_MANUSCRIPT,
            data={
                "chapter_numbers": numbers,
                "title": self.manuscript.title,
                "total_chapters": len(numbers),
            },
        )

    def _start_chapter(self) -> None:
        number = self.state.remaining_chapters()[0]
        chapter = self._chapters[number]
        self._emit_log("info", f"Chapter {number}: {chapter.title}", chapter=number)
        self._flush_events_now()
        self._checkpoint(
            CheckpointType.CHAPTER_START,
            ProcessingStep.ANALYZING_CHAPTERS,
            chapter=number,
            data={"chapter_title": chapter.title, "word_count": chapter.word_count},
        )

    def _analyze_chapter(self) -> None:
        chapter = self._begin_chapter_step(0)
        moments = self.providers.analyzer.analyze(chapter, self.state.max_emotional_moments)
        self._end_chapter_step(
            0,
            chapter,
            f"Found {len(moments)} emotional moments in chapter {chapter.number}",
            CheckpointType.CHAPTER_ANALYZED,
            ProcessingStep.ANALYZING_CHAPTERS,
            {"emotional_moments": [m.to_dict() for m in moments]},
        )

    def _generate_prompts(self) -> None:
        chapter = self._begin_chapter_step(1)
        style = self.state.style_config
        prompts = [
            self.providers.prompt_writer.write(EmotionalMoment.from_dict(m), chapter, style)
            for m in self.state.moments
        ]
        self._end_chapter_step(
            1,
            chapter,
            f"Wrote {len(prompts)} prompts for chapter {chapter.number}",
            CheckpointType.PROMPTS_GENERATED,
            ProcessingStep.GENERATING_PROMPTS,
            {"generated_prompts": [p.to_dict() for p in prompts]},
        )

    def _begin_chapter_step(self, step: int) -> Chapter:
        """Tell clients at once that the spec's step ``step`` of this chapter is under way."""
        chapter = self._current_chapter()
        self._emit_step(step, "processing")
        self._flush_events_now()
        return chapter

    def _end_chapter_step(
        self,
        step: int,
        chapter: Chapter,
        message: str,
        checkpoint_type: CheckpointType,
        processing_step: ProcessingStep,
        data: dict[str, Any],
    ) -> None:
        """Report the step ``step`` of ``chapter`` done, in the checkpoint that records it."""
        self._emit_log("success", message, chapter=chapter.number)
        self._emit_step(step, "completed")
        self._checkpoint(checkpoint_type, processing_step, chapter=chapter.number, data=data)

    def _generate_next_image(self) -> None:
        state = self.state
        chapter = self._current_chapter()
        scene = len(state.chapter_images) + 1
        prompt = IllustrationPrompt.from_dict(state.prompts[scene - 1])
        moment = EmotionalMoment.from_dict(state.moments[scene - 1])
        relative = (
            Path("generated_images") / state.session_id / image_filename(chapter.number, scene)
        )
        destination = self.settings.output_dir / relative
        if scene == 1:
            self._emit_step(2, "processing")
            self._flush_events_now()
        self._place_image(prompt, moment, destination, chapter.number)
        web_url = "/" + relative.as_posix()
        record = ImageRecord(
            session_id=state.session_id,
            chapter_number=chapter.number,
            scene_number=scene,
            generation_order=state.total_images_generated + 1,
            file_path=relative.as_posix(),
            web_url=web_url,
            prompt_used=prompt.prompt,
            checkpoint_sequence=state.last_sequence_number + 1,
        )
        self._emit(
            EventType.IMAGE,
            {
                "image_url": web_url,
                "prompt": prompt.prompt,
                "chapter_number": chapter.number,
                "scene_number": scene,
            },
        )
        if scene == len(state.prompts):
            self._emit_step(2, "completed")
        self._checkpoint(
            CheckpointType.IMAGES_GENERATING,
            ProcessingStep.GENERATING_IMAGES,
            chapter=chapter.number,
            data={
                "image": record.to_json(),
                "scene_number": scene,
                "scenes_total": len(state.prompts),
            },
            images=(record,),
            placed_files=(destination,),
        )

    def _place_image(
        self,
        prompt: IllustrationPrompt,
        moment: EmotionalMoment,
        destination: Path,
        chapter_number: int,
    ) -> None:
        """Have the image at ``destination``: generated, or already there from before a crash."""
        if destination.exists():
            # Written atomically before a crash or pause cut the checkpoint off: it is
            # complete, and regenerating it would pay for the same image twice. (Its
            # folder entry is synced again with this checkpoint.)
            self._emit_log(
                "info",
                f"Image {destination.name} already on disk; not regenerated",
                chapter=chapter_number,
            )
            return
        if not self._image_folder_ready:
            # Once per actor, durably: the batch syncs this folder for its images but
            # not the entry that names it, which only its creation can sync.
            make_dirs(destination.parent, fsync=True)
            self._image_folder_ready = True
        # The image's data is synced before its rename; its folder, which makes the
        # rename durable, is synced by the checkpoint's batch (one sync for all).
        with folder_sync_deferred():
            self.providers.image_generator.generate(prompt, moment, destination)

    def _complete_chapter(self) -> None:
        number = self.state.current_chapter
        assert number is not None
        self._emit_log("success", f"Chapter {number} completed", chapter=number)
        self._checkpoint(
            CheckpointType.CHAPTER_COMPLETED, ProcessingStep.GENERATING_IMAGES, chapter=number
        )

    def _complete_session(self) -> None:
        state = self.state
        self._emit_step(3, "processing")
        self._flush_events_now()
        self._checkpoint_terminal(
            CheckpointType.SESSION_COMPLETED,
            ProcessingStep.COMPLETING_SESSION,
            SessionStatus.COMPLETED,
            data={"total_images_generated": state.total_images_generated},
            before=lambda: self._emit_completion(),
        )

    def _emit_completion(self) -> None:
        state = self.state
        self._emit_step(3, "completed")
        self._emit(
            EventType.COMPLETE,
            {
                "images_count": state.total_images_generated,
                "chapters_processed": len(state.processed_chapters),
                "total_chapters": state.total_chapters,
                "message": "Processing completed",
            },
        )

    def _current_chapter(self) -> Chapter:
        number = self.state.current_chapter
        assert number is not None, "no chapter in progress"
        return self._chapters[number]
