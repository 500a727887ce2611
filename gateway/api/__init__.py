"""The HTTP surface: OpenAI routes, ops routes and the error boundary. Thin: parse, call the pipeline, serialize."""
