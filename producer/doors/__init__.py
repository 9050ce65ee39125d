"""Doors for other clients: other APIs' dialects translated to ordinary sdq jobs of the caller's tenant.

`producer.doors.openai` speaks OpenAI's Images API under `/openai/v1`; `producer.doors.a1111` speaks the
AUTOMATIC1111 web UI's API under `/sdapi/v1`. Both are thin: they parse their dialect, submit through the job
layer like `POST /v1/jobs` does, and answer in their dialect's shapes.
"""
