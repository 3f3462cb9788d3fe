"""The engine's API: `Engine`, its config (`EngineConfig`), input building, the engine
thread."""
