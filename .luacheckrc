-- luacheck configuration (make lint)
std = "lua54"
max_line_length = 120
files["spec"] = { std = "+busted" }
-- a DAG file with a syntax error on purpose (spec/dsl_spec.lua loads it)
exclude_files = { "spec/fixtures/dags/syntax.lua" }
