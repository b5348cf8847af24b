"""Implementations of the application layer's ports on outside systems (Redis), chosen
and handed to `PacelineService` at start-up; `app/` never imports this package."""
