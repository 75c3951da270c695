"""What the tests share besides fixtures (those stay in tests/conftest.py).

data: a tiny CIFAR-10 archive in the official format. project: a throw-away copy of the project and its
params.yaml. processes: running stage CLIs and waiting on what a process prints. servers: the team tests'
PostgreSQL, S3-compatible and MLflow servers. pyproject.toml puts tests/ on sys.path (`from helpers...`).
"""
