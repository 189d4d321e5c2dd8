-- The scheduler applies Airflow's trigger rules to real runs: each rule
-- once where it runs and once where it ends skipped or upstream_failed,
-- plus skip propagation and the run state decided from the leaves.
local flow = require "zkflow"
local H = dofile("spec/fixtures/sched/helpers.lua")

-- A DAG whose task "t" (rule `rule`) follows upstreams built by `ups`
-- (a list of {kind, id[, arg]}).
local function rule_dag(rule, ups)
  return flow.dag {
    id = "rule_" .. rule,
    tasks = function(t)
      local list = {}
      for _, u in ipairs(ups) do
        local kind, id, arg = u[1], u[2], u[3]
        if kind == "slow" then
          list[#list + 1] = H.slow(t, id, arg)
        else
          list[#list + 1] = H[kind](t, id)
        end
      end
      t.lua { id = "t", trigger_rule = rule, after = list,
              run = function() return require("zkflow.core").now() end }
    end,
  }
end

local function state_of_t(rule, ups)
  local res = H.test(rule_dag(rule, ups))
  return res.tasks.t.state, res
end

describe("trigger rules in a run", function()
  -- rule -> { {upstreams, expected state of t}, ... }
  local cases = {
    all_success = {
      { { { "ok", "a" }, { "ok", "b" } }, "success" },
      { { { "ok", "a" }, { "bad", "b" } }, "upstream_failed" },
      { { { "ok", "a" }, { "skip", "b" } }, "skipped" },
    },
    all_failed = {
      { { { "bad", "a" }, { "bad", "b" } }, "success" },
      { { { "bad", "a" }, { "ok", "b" } }, "skipped" },
    },
    all_done = {
      { { { "bad", "a" }, { "skip", "b" }, { "ok", "c" } }, "success" },
    },
    all_done_min_one_success = {
      { { { "bad", "a" }, { "ok", "b" } }, "success" },
      { { { "bad", "a" }, { "bad", "b" } }, "upstream_failed" },
      { { { "ok", "a" }, { "skip", "b" } }, "skipped" },
    },
    all_skipped = {
      { { { "skip", "a" }, { "skip", "b" } }, "success" },
      { { { "skip", "a" }, { "ok", "b" } }, "skipped" },
    },
    one_success = {
      { { { "bad", "a" }, { "ok", "b" } }, "success" },
      { { { "bad", "a" }, { "skip", "b" } }, "upstream_failed" },
      { { { "skip", "a" }, { "skip", "b" } }, "skipped" },
    },
    one_failed = {
      { { { "bad", "a" }, { "ok", "b" } }, "success" },
      { { { "ok", "a" }, { "skip", "b" } }, "skipped" },
    },
    one_done = {
      { { { "bad", "a" }, { "skip", "b" } }, "success" },
      { { { "skip", "a" }, { "skip", "b" } }, "skipped" },
    },
    none_failed = {
      { { { "ok", "a" }, { "skip", "b" } }, "success" },
      { { { "skip", "a" }, { "skip", "b" } }, "success" },
      { { { "ok", "a" }, { "bad", "b" } }, "upstream_failed" },
    },
    none_failed_min_one_success = {
      { { { "ok", "a" }, { "skip", "b" } }, "success" },
      { { { "skip", "a" }, { "skip", "b" } }, "skipped" },
      { { { "skip", "a" }, { "bad", "b" } }, "upstream_failed" },
    },
    none_skipped = {
      { { { "ok", "a" }, { "bad", "b" } }, "success" },
      { { { "ok", "a" }, { "skip", "b" } }, "skipped" },
    },
    always = {
      { { { "bad", "a" }, { "skip", "b" } }, "success" },
    },
  }
  local rules = {}
  for r in pairs(cases) do rules[#rules + 1] = r end
  table.sort(rules)
  for _, rule in ipairs(rules) do
    describe(rule, function()
      for _, case in ipairs(cases[rule]) do
        local names = {}
        for _, u in ipairs(case[1]) do names[#names + 1] = u[1] end
        it(("ends %s after %s"):format(case[2], table.concat(names, " + ")), function()
          assert.equal(case[2], (state_of_t(rule, case[1])))
        end)
      end
    end)
  end

  it("covers every trigger rule with a case that runs and one that does not", function()
    for _, r in ipairs(require("zkflow.dsl.dag").TRIGGER_RULES) do
      local ran, not_ran = false, r == "all_done" or r == "always"
      for _, case in ipairs(cases[r] or {}) do
        if case[2] == "success" then ran = true else not_ran = true end
      end
      assert.is_true(ran and not_ran, r)
    end
  end)

  describe("all_done and always, which no upstream state can skip or fail", function()
    it("all_done is skipped by a short-circuit that ignores downstream trigger rules", function()
      local res = H.test(flow.dag {
        id = "all_done_sc",
        tasks = function(t)
          local sc = t.short_circuit { id = "sc", run = function() return false end }
          local a = H.ok(t, "a", { after = { sc } })
          H.ok(t, "t", { after = { a }, trigger_rule = "all_done" })
        end,
      })
      assert.equal("skipped", res.tasks.t.state)
    end)

    it("always runs at once, without waiting for its upstreams", function()
      local res = H.test(flow.dag {
        id = "always_now",
        tasks = function(t)
          local s = H.slow(t, "s", 0.3)
          t.lua { id = "t", after = { s }, trigger_rule = "always",
                  run = function() return require("zkflow.core").now() end }
        end,
      })
      assert.equal("success", res.tasks.t.state)
      assert.is_true(res.tasks.t.xcom < res.tasks.s.xcom)
    end)
  end)

  describe("rules that do not wait for every upstream", function()
    for _, c in ipairs({ { "one_success", "ok" }, { "one_failed", "bad" }, { "one_done", "ok" } }) do
      it(c[1] .. " runs while another upstream still runs", function()
        local state, res = state_of_t(c[1], { { c[2], "a" }, { "slow", "s", 0.3 } })
        assert.equal("success", state)
        assert.equal("success", res.tasks.s.state)
        -- t's xcom is the time it ran; s's is the time it ended
        assert.is_true(res.tasks.t.xcom < res.tasks.s.xcom)
      end)
    end

    it("all_success ends upstream_failed at the first failure, not after the rest", function()
      local res = H.test(flow.dag {
        id = "early_uf",
        tasks = function(t)
          local a = H.bad(t, "a")
          local s = H.slow(t, "s", 0.3)
          local mid = t.lua { id = "mid", after = { a, s }, run = function() end }
          -- mark: runs as soon as mid is decided
          t.lua { id = "probe", after = { mid }, trigger_rule = "all_done",
                  run = function() return require("zkflow.core").now() end }
        end,
      })
      assert.equal("upstream_failed", res.tasks.mid.state)
      assert.is_true(res.tasks.probe.xcom < res.tasks.s.xcom)
    end)
  end)

  describe("skip propagation", function()
    it("skips a chain of all_success tasks after a skipped task", function()
      local res = H.test(flow.dag {
        id = "skip_chain",
        tasks = function(t)
          local a = H.skip(t, "a")
          local b = H.ok(t, "b", { after = { a } })
          local c = H.ok(t, "c", { after = { b } })
          H.ok(t, "d", { after = { c }, trigger_rule = "none_failed" })
        end,
      })
      assert.same({ a = "skipped", b = "skipped", c = "skipped", d = "success" }, H.states(res))
      assert.equal("success", res.state)
    end)

    it("propagates upstream_failed down a chain and fails the run", function()
      local res = H.test(flow.dag {
        id = "uf_chain",
        tasks = function(t)
          local a = H.bad(t, "a")
          local b = H.ok(t, "b", { after = { a } })
          H.ok(t, "c", { after = { b } })
        end,
      })
      assert.same({ a = "failed", b = "upstream_failed", c = "upstream_failed" }, H.states(res))
      assert.equal("failed", res.state)
    end)
  end)

  describe("the run's state, decided from the leaves", function()
    it("succeeds when a failure is absorbed by an all_done leaf", function()
      local res = H.test(flow.dag {
        id = "absorb",
        tasks = function(t)
          local a = H.bad(t, "a")
          H.ok(t, "cleanup", { after = { a }, trigger_rule = "all_done" })
        end,
      })
      assert.equal("failed", res.tasks.a.state)
      assert.equal("success", res.state)
    end)

    it("fails when any leaf failed, even if another leaf succeeded", function()
      local res = H.test(flow.dag {
        id = "two_leaves",
        tasks = function(t)
          H.ok(t, "a")
          H.bad(t, "b")
        end,
      })
      assert.equal("failed", res.state)
    end)

    it("succeeds when every leaf is skipped", function()
      local res = H.test(flow.dag {
        id = "all_skipped_leaves",
        tasks = function(t)
          local a = H.skip(t, "a")
          H.ok(t, "b", { after = { a } })
        end,
      })
      assert.equal("success", res.state)
    end)
  end)

  describe("a branch, as Airflow's skip_all_except", function()
    it("runs a join that is downstream of the chosen task too", function()
      -- branch >> {task1, join}, task1 >> join
      local res = H.test(flow.dag {
        id = "branch_join",
        tasks = function(t)
          local br = t.branch { id = "branch", run = function() return "task1" end }
          local task1 = H.ok(t, "task1", { after = { br } })
          H.ok(t, "join", { after = { br, task1 }, trigger_rule = "none_failed_min_one_success" })
        end,
      })
      assert.same({ branch = "success", task1 = "success", join = "success" }, H.states(res))
      assert.equal("success", res.state)
    end)

    it("does not skip a direct downstream task that a chosen task leads to", function()
      -- branch >> b1 >> b2, branch >> b2
      local res = H.test(flow.dag {
        id = "branch_chain",
        tasks = function(t)
          local br = t.branch { id = "branch", run = function() return "b1" end }
          local b1 = H.ok(t, "b1", { after = { br } })
          H.ok(t, "b2", { after = { br, b1 } })
        end,
      })
      assert.same({ branch = "success", b1 = "success", b2 = "success" }, H.states(res))
    end)

    it("still skips what no chosen task leads to", function()
      local res = H.test(flow.dag {
        id = "branch_other",
        tasks = function(t)
          local br = t.branch { id = "branch", run = function() return "task1" end }
          local task1 = H.ok(t, "task1", { after = { br } })
          local other = H.ok(t, "other", { after = { br } })
          H.ok(t, "join", { after = { task1, other }, trigger_rule = "none_failed_min_one_success" })
        end,
      })
      assert.same({ branch = "success", task1 = "success", other = "skipped", join = "success" },
                  H.states(res))
    end)
  end)
end)
