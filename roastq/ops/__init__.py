"""Operations: periodic maintenance and its once-per-tick scheduler guard, the system pause,
health checks, and the legacy RoastMyPost import."""
