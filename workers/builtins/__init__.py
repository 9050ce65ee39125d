"""The built-in models, generated deterministically on first use: `registry` (every built-in by name), the shared
tiny parts, and one generator module per family of built-ins."""
