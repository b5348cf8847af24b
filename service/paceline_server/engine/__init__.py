"""The curriculum engine: reports in, batches out; deterministic and I/O-free."""

from paceline_server.engine.engine import CurriculumEngine, EngineState, run_stream

__all__ = ["CurriculumEngine", "EngineState", "run_stream"]
