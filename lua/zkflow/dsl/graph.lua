-- zkflow.dsl.graph: graph algorithms over a built DAG's tasks.
--
-- Owns the topological order (toposort) and the effective priority
-- weights (weights, reach_sums).  They run once the builder has resolved
-- every edge and found no cycle; they read dag.tasks/order/topo and the
-- tasks' upstream/downstream lists, and write task.priority_weight.

local util = require "zkflow.dsl.util"
util.mark_internal()

local _M = {}

local ipairs, pairs = ipairs, pairs
local concat, sort = table.concat, table.sort

--- Finds cycles by depth-first search: returns a list with each one as a
--- path "a -> b -> a", in the order found (empty when there is none).
function _M.cycles(dag)
    local byid, order = dag.tasks, dag.order
    local color, stack, found = {}, {}, {}
    local function visit(id)
        color[id] = 1
        stack[#stack + 1] = id
        for _, d in ipairs(byid[id].downstream) do
            if color[d] == 1 then
                local path, start = {}, nil
                for i, s in ipairs(stack) do
                    if s == d then start = i end
                    if start then path[#path + 1] = s end
                end
                path[#path + 1] = d
                found[#found + 1] = concat(path, " -> ")
            elseif not color[d] then
                visit(d)
            end
        end
        stack[#stack] = nil
        color[id] = 2
    end
    for _, id in ipairs(order) do
        if not color[id] then visit(id) end
    end
    return found
end

-- Kahn's algorithm; ties broken by declaration order for stable output.
-- The ready set is a binary min-heap on declaration position, so the
-- order is the same as always taking the earliest declared ready task,
-- in O((n + e) log n) instead of re-sorting the ready list at each step.
function _M.toposort(dag)
    local byid, order = dag.tasks, dag.order
    local pos, indeg = {}, {}
    for i, id in ipairs(order) do
        pos[id] = i
        indeg[id] = #byid[id].upstream
    end
    local heap, n = {}, 0
    local function push(id)
        n = n + 1
        local i, p = n, pos[id]
        while i > 1 do
            local parent = i // 2
            local hp = heap[parent]
            if pos[hp] <= p then break end
            heap[i] = hp
            i = parent
        end
        heap[i] = id
    end
    local function pop()
        local top, last = heap[1], heap[n]
        heap[n] = nil
        n = n - 1
        if n > 0 then
            local i, p = 1, pos[last]
            while true do
                local c = i * 2
                if c > n then break end
                if c < n and pos[heap[c + 1]] < pos[heap[c]] then c = c + 1 end
                if pos[heap[c]] >= p then break end
                heap[i] = heap[c]
                i = c
            end
            heap[i] = last
        end
        return top
    end
    for _, id in ipairs(order) do
        if indeg[id] == 0 then push(id) end
    end
    local topo = {}
    while n > 0 do
        local id = pop()
        topo[#topo + 1] = id
        for _, d in ipairs(byid[id].downstream) do
            local k = indeg[d] - 1
            indeg[d] = k
            if k == 0 then push(d) end
        end
    end
    return topo
end

-- Effective priority weights, as Airflow's weight_rule computes them:
-- downstream/upstream add the weights of every distinct descendant/ancestor.
--
-- All reach sums come from one pass in dependency order (reach_sums), not
-- from a walk per task, which is O(n * e) on a layered DAG.

local function popcount(x)
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0f
    return (x * 0x0101010101010101) >> 56
end

local LOG2 = {}
for b = 0, 63 do LOG2[1 << b] = b end

-- For every task, the sum of `weight` over the distinct tasks reachable
-- through `dir` ("downstream" or "upstream").  Returns {[id] = sum}.
--
-- Tasks are numbered in the order they are visited (reverse topological
-- for downstream), so whatever a task reaches has a smaller number.  A
-- task with one neighbour c reaches {c} + reach(c), so its sum is exact
-- without a set.  A task with several neighbours gets its reach as a
-- bitset: each neighbour is added with what it reaches, following
-- one-neighbour chains and copying stored bitsets, and stopping at a task
-- already present (the set is closed under reach, so the rest is there
-- too).  Tasks with the same neighbours share one set (a fully connected
-- layer costs one union, not one per task).  The sum is a popcount times
-- the weight when every weight is the same, one popcount per weight class
-- when there are a few, and a walk over the set bits otherwise.
local function reach_sums(byid, topo, dir, weight_of)
    local n = #topo
    local proc, step = {}, {}
    for i = 1, n do
        local id = dir == "downstream" and topo[n + 1 - i] or topo[i]
        proc[i], step[id] = id, i
    end
    local w, classes, nclass = {}, {}, 0
    for i = 1, n do
        local x = weight_of(byid[proc[i]])
        w[i] = x
        if not classes[x] then
            nclass = nclass + 1
            classes[x] = nclass
        end
    end
    local total_words = (n - 1) // 64 + 1
    local masks    -- weight -> bitset of the tasks with that weight
    if nclass > 1 and nclass <= 8 then
        masks = {}
        for x in pairs(classes) do
            local m = {}
            for i = 1, total_words do m[i] = 0 end
            masks[x] = m
        end
        for i = 1, n do
            local m = masks[w[i]]
            local wi = (i - 1) // 64 + 1
            m[wi] = m[wi] | (1 << ((i - 1) % 64))
        end
    end
    local uniform = nclass == 1 and w[1] or nil

    local function weigh(set)
        local s = 0
        if uniform then
            local c = 0
            for i = 1, #set do
                local x = set[i]
                if x ~= 0 then c = c + popcount(x) end
            end
            return c * uniform
        elseif masks then
            for x, m in pairs(masks) do
                local c = 0
                for i = 1, #set do
                    local y = set[i] & m[i]
                    if y ~= 0 then c = c + popcount(y) end
                end
                s = s + c * x
            end
            return s
        end
        for i = 1, #set do
            local y = set[i]
            local base = (i - 1) * 64 + 1
            while y ~= 0 do
                local low = y & -y
                s = s + w[base + LOG2[low]]
                y = y ~ low
            end
        end
        return s
    end

    local sum, single, sets, by_key = {}, {}, {}, {}
    local nbs = {}
    for s = 1, n do
        local list = byid[proc[s]][dir]
        local m = #list
        if m == 0 then
            sum[s] = 0
        elseif m == 1 then
            local c = step[list[1]]
            single[s] = c
            sum[s] = w[c] + sum[c]
        else
            -- neighbour lists are sorted ids: equal lists, equal keys
            local key = concat(list, "\0")
            local shared = by_key[key]
            if shared then
                sets[s], sum[s] = sets[shared], sum[shared]
            else
                for i = 1, m do nbs[i] = step[list[i]] end
                for i = m + 1, #nbs do nbs[i] = nil end
                sort(nbs)
                local acc = {}
                for i = 1, (s - 2) // 64 + 1 do acc[i] = 0 end
                -- the latest visited first: it reaches the most of the others
                for i = m, 1, -1 do
                    local c = nbs[i]
                    while c do
                        local wi, bit = (c - 1) // 64 + 1, 1 << ((c - 1) % 64)
                        local word = acc[wi]
                        if word & bit ~= 0 then break end
                        acc[wi] = word | bit
                        local sc = sets[c]
                        if sc then
                            for j = 1, #sc do acc[j] = acc[j] | sc[j] end
                            break
                        end
                        c = single[c]
                    end
                end
                sets[s], sum[s], by_key[key] = acc, weigh(acc), s
            end
        end
    end
    local out = {}
    for s = 1, n do out[proc[s]] = sum[s] end
    return out
end
_M.reach_sums = reach_sums

local function own_weight(task)
    return task.weight or 1
end

function _M.weights(dag)
    local byid, topo = dag.tasks, dag.topo
    local need = {}
    for _, task in pairs(byid) do
        need[task.weight_rule] = true
    end
    local down = need.downstream and reach_sums(byid, topo, "downstream", own_weight)
    local up = need.upstream and reach_sums(byid, topo, "upstream", own_weight)
    for id, task in pairs(byid) do
        local w = task.weight or 1
        local rule = task.weight_rule
        if rule == "downstream" then
            w = w + down[id]
        elseif rule == "upstream" then
            w = w + up[id]
        end
        task.priority_weight = w
        task.weight = nil
    end
end

return _M
