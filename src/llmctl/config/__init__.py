"""The config pipeline: instances.yaml in, the frozen specs of llmctl.spec out, or one located line per problem.

    path ──read──> text ──parse──> document ──prepare──> prepared ──validate──> Config
                                 (line marks)  (${VAR}, defaults:)   (schema, backends)
                                      └──────────────────────────────────┴──locate──> "file:line: instance, field: ..."

    read.py        step 1: the file's text, read safely (a regular file, bounded, UTF-8)
    yamlsource.py  step 2: safe YAML that remembers each value's line; duplicate keys refused
    prep.py        step 3: `${VAR}` expanded from the environment, `defaults:` merged into each instance
    schema.py      step 4: the pydantic models, every default and constraint
    locate.py      step 5: each problem as one line naming file:line, instance and field
    load.py        the pipeline: `load_config` / `parse_config` run the steps once, in order, and the backend checks
    cache.py       around the pipeline: a validated config reused while nothing it depends on changed

Each module imports only the ones listed above it (tests/test_config_pipeline.py keeps it so).
"""
