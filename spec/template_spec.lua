-- Templating: `{{ expr }}` in task fields.

local template = require "zkflow.dsl.template"

describe("template.render", function()
    local ctx

    before_each(function()
        ctx = {
            ds = "2026-01-01",
            ts = "2026-01-01T00:00:00+00:00",
            run_id = "scheduled__2026-01-01T00:00:00+00:00",
            params = { table = "users", n = 3 },
            var = { env = "prod" },
            ti = { task_id = "load", try_number = 2 },
            dag = { dag_id = "etl" },
            xcom = function(task) return "xcom of " .. task end,
        }
    end)

    it("renders context fields", function()
        assert.equal("backup-2026-01-01.json", template.render("backup-{{ ds }}.json", ctx))
        assert.equal("users/3", template.render("{{ params.table }}/{{params.n}}", ctx))
        assert.equal("etl.load try 2",
            template.render("{{ dag.dag_id }}.{{ ti.task_id }} try {{ ti.try_number }}", ctx))
        assert.equal("prod", template.render("{{ var.env }}", ctx))
    end)

    it("calls functions of the context", function()
        assert.equal("xcom of extract", template.render("{{ xcom('extract') }}", ctx))
    end)

    it("evaluates Lua expressions with a few helpers", function()
        assert.equal("20260101", template.render("{{ ds:gsub('-', '') }}", ctx))
        assert.equal("3", template.render("{{ ti.try_number + 1 }}", ctx))
        assert.equal("USERS", template.render("{{ string.upper(params.table) }}", ctx))
        assert.equal("2", template.render("{{ math.max(1, 2) }}", ctx))
        assert.equal("1970", template.render("{{ os.date('!%Y', 0) }}", ctx))
    end)

    it("renders nil as empty and integral floats without .0", function()
        assert.equal("[]", template.render("[{{ nothing }}]", ctx))
        assert.equal("4", template.render("{{ 8 / 2 }}", ctx))
        assert.equal("2.5", template.render("{{ 5 / 2 }}", ctx))
        assert.equal("true", template.render("{{ params.n == 3 }}", ctx))
    end)

    it("leaves strings without templates alone", function()
        assert.equal("plain { text }", template.render("plain { text }", ctx))
    end)

    it("gives no access to globals outside the context", function()
        assert.equal("", template.render("{{ io }}{{ require }}{{ os.exit }}{{ _G }}", ctx))
    end)

    it("lets context fields shadow helpers", function()
        ctx.string = "mine"
        assert.equal("mine", template.render("{{ string }}", ctx))
    end)

    it("raises on an unclosed expression, naming the template", function()
        local ok, err = pcall(template.render, "echo {{ ds", ctx, "task 'x' field 'cmd'")
        assert.is_false(ok)
        assert.equal("template task 'x' field 'cmd': '{{' without '}}' in '{{ ds'", err)
    end)

    it("raises on an expression that does not compile", function()
        local ok, err = pcall(template.render, "{{ ds + }}", ctx, "t")
        assert.is_false(ok)
        assert.matches("template t: cannot compile '{{ ds + }}'", err, 1, true)
    end)

    it("raises on an expression that fails, naming it", function()
        local ok, err = pcall(template.render, "{{ params.missing.x }}", ctx)
        assert.is_false(ok)
        assert.matches("error in '{{ params.missing.x }}'", err, 1, true)
        assert.matches("attempt to index a nil value", err, 1, true)
    end)

    it("reuses compiled expressions across contexts", function()
        assert.equal("2026-01-01", template.render("{{ ds }}", ctx))
        assert.equal("2026-01-02", template.render("{{ ds }}", { ds = "2026-01-02" }))
    end)
end)

describe("template.render_value", function()
    local ctx = { ds = "2026-01-01" }

    it("renders nested table values but not keys", function()
        local v = { ["{{ ds }}"] = "{{ ds }}", list = { "a-{{ ds }}", 3 }, n = 1 }
        local out = template.render_value(v, ctx)
        assert.same({ ["{{ ds }}"] = "2026-01-01", list = { "a-2026-01-01", 3 }, n = 1 }, out)
        assert.equal("a-{{ ds }}", v.list[1])
    end)

    it("leaves numbers, booleans and functions alone", function()
        local f = function() end
        assert.equal(5, template.render_value(5, ctx))
        assert.equal(false, template.render_value(false, ctx))
        assert.equal(f, template.render_value(f, ctx))
        assert.is_nil(template.render_value(nil, ctx))
    end)

    it("renders a task's templated fields", function()
        local flow = require "zkflow"
        local d = flow.dag { id = "tpl", tasks = function(t)
            t.shell { id = "s", cmd = "echo {{ ds }}", env = { D = "{{ ds }}" }, cwd = "/tmp" }
        end }
        local r = template.render_task(d.tasks.s, ctx)
        assert.same({ cmd = "echo 2026-01-01", env = { D = "2026-01-01" }, cwd = "/tmp" }, r)
        assert.equal("echo {{ ds }}", d.tasks.s.cmd)
    end)
end)
