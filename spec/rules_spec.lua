-- zkflow.rules: Airflow's trigger rules, decided from upstream states.
-- The expectations follow Airflow 3.1's TriggerRuleDep
-- (airflow/ti_deps/deps/trigger_rule_dep.py, _evaluate_direct_relatives
-- with flag_upstream_failed): "run", "wait", or the state the task ends in.
local rules = require "zkflow.rules"

-- Counts from a list of upstream states ("running" and "none" are not done).
local function decide(rule, states)
  return rules.decide(rule, rules.count(states))
end

describe("zkflow.rules", function()
  it("knows the twelve trigger rules of DESIGN.md", function()
    local n = 0
    for _ in pairs(rules.NAMES) do n = n + 1 end
    assert.equal(12, n)
    for _, r in ipairs(require("zkflow.dsl.dag").TRIGGER_RULES) do
      assert.is_true(rules.NAMES[r], r)
    end
  end)

  it("raises on an unknown rule", function()
    assert.has_error(function() rules.decide("most_success", rules.count({})) end,
                     "unknown trigger rule 'most_success'")
  end)

  it("runs a task without upstreams whatever its rule", function()
    for r in pairs(rules.NAMES) do
      assert.equal("run", decide(r, {}), r)
    end
  end)

  -- rule -> list of {upstream states, expected}
  local cases = {
    all_success = {
      { { "success", "success" }, "run" },
      { { "success", "running" }, "wait" },
      { { "failed", "running" }, "upstream_failed" },
      { { "upstream_failed", "success" }, "upstream_failed" },
      { { "skipped", "running" }, "skipped" },
      { { "skipped", "failed" }, "upstream_failed" },
    },
    all_failed = {
      { { "failed", "upstream_failed" }, "run" },
      { { "failed", "running" }, "wait" },
      { { "failed", "success" }, "skipped" },
      { { "skipped", "running" }, "skipped" },
    },
    all_done = {
      { { "success", "failed", "skipped", "upstream_failed" }, "run" },
      { { "failed", "running" }, "wait" },
    },
    all_done_min_one_success = {
      { { "success", "failed" }, "run" },
      { { "success", "upstream_failed" }, "run" },
      { { "success", "running" }, "wait" },
      { { "failed", "upstream_failed" }, "upstream_failed" },
      { { "failed", "running" }, "wait" },
      -- a skipped upstream is not "done" for this rule: skipped at once
      { { "success", "skipped" }, "skipped" },
      { { "skipped", "running" }, "skipped" },
    },
    all_skipped = {
      { { "skipped", "skipped" }, "run" },
      { { "skipped", "running" }, "wait" },
      { { "skipped", "success" }, "skipped" },
      { { "failed", "running" }, "skipped" },
      { { "upstream_failed", "skipped" }, "skipped" },
    },
    one_success = {
      -- does not wait for the upstreams still running
      { { "success", "running" }, "run" },
      { { "failed", "success" }, "run" },
      { { "failed", "running" }, "wait" },
      { { "skipped", "skipped" }, "skipped" },
      { { "failed", "skipped" }, "upstream_failed" },
      { { "upstream_failed", "failed" }, "upstream_failed" },
    },
    one_failed = {
      { { "failed", "running" }, "run" },
      { { "upstream_failed", "running" }, "run" },
      { { "success", "running" }, "wait" },
      { { "success", "skipped" }, "skipped" },
    },
    one_done = {
      { { "success", "running" }, "run" },
      { { "failed", "running" }, "run" },
      { { "skipped", "running" }, "wait" },
      { { "upstream_failed", "running" }, "wait" },
      { { "skipped", "upstream_failed" }, "skipped" },
    },
    none_failed = {
      { { "success", "skipped" }, "run" },
      { { "skipped", "skipped" }, "run" },
      { { "success", "running" }, "wait" },
      { { "failed", "running" }, "upstream_failed" },
      { { "upstream_failed", "success" }, "upstream_failed" },
    },
    none_failed_min_one_success = {
      { { "success", "skipped" }, "run" },
      { { "success", "running" }, "wait" },
      { { "skipped", "running" }, "wait" },
      { { "skipped", "skipped" }, "skipped" },
      { { "failed", "running" }, "upstream_failed" },
      { { "upstream_failed", "skipped" }, "upstream_failed" },
    },
    none_skipped = {
      { { "success", "failed", "upstream_failed" }, "run" },
      { { "success", "running" }, "wait" },
      { { "skipped", "running" }, "skipped" },
    },
    always = {
      { { "running", "none" }, "run" },
      { { "failed", "skipped" }, "run" },
    },
  }

  for rule, list in pairs(cases) do
    describe(rule, function()
      for _, case in ipairs(list) do
        local states, want = case[1], case[2]
        it(("gives %s for upstreams %s"):format(want, table.concat(states, ", ")), function()
          assert.equal(want, decide(rule, states))
        end)
      end
    end)
  end

  it("counts finished states only", function()
    local c = rules.count({ "success", "running", "up_for_retry", "skipped", "removed" })
    assert.same({ total = 5, success = 1, skipped = 1, failed = 0, upstream_failed = 0,
                  removed = 1, done = 3 }, c)
  end)
end)
