"""Small transcripts for tests."""

from chaptering.schema import Chapter, Segment, Transcript


def make_transcript(n: int = 30, chapters: tuple[int, ...] = (0, 10, 20), tid: str = "t1", timed: bool = True) -> Transcript:
    return Transcript(
        id=tid,
        segments=[
            Segment(text=f"sentence number {i} about topic {i // 10}", start=2.0 * i if timed else None,
                    end=2.0 * i + 1.9 if timed else None)
            for i in range(n)
        ],
        chapters=[Chapter(title=f"Topic {k}", start_segment=s) for k, s in enumerate(chapters)],
    )
