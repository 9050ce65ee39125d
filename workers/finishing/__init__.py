"""The end of a job, as idempotent control-queue tasks: the manifest and contact sheet, and webhooks."""
