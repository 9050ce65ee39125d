"""sdq producer: the thin Flask submitter (`producer.app.create_app`). Imports no torch or diffusers."""
