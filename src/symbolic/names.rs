//! Names for shared subexpressions, so that a large formula prints in the size of its DAG.
//!
//! In: a node of a [`Graph`]. Out: `None` when its tree is small (at most
//! [`NAMING_NODES`] nodes: it prints as it is), else a [`Named`]: a copy of the graph in
//! which every shared subexpression of some size is a new variable `s1`, `s2`, ..., the body
//! written with them, and their definitions in order (each uses only the names before it).
//! Invariants: substituting the definitions back gives the original node exactly; every node
//! used twice or more with at least [`MIN_NAMED_NODES`] nodes below it (named parts counting
//! one) is named, so the body and the definitions together print in size proportional to the
//! DAG, not to the tree; the names collide with no variable or dimension of the program.

use std::collections::{HashMap, HashSet};

use crate::expr::{Graph, Id, Var};

/// A tree with more nodes than this prints with names for its shared parts.
pub const NAMING_NODES: u64 = 500;

/// The smallest subexpression (in nodes, named parts counting one) that gets a name:
/// `x'*x+1` (5 nodes) does, `x'*x` (3) prints in place.
pub const MIN_NAMED_NODES: u64 = 5;

/// A formula with named parts: `body where s1 = defs[0].1, s2 = ...` in `graph`.
pub struct Named {
    pub graph: Graph,
    pub body: Id,
    pub defs: Vec<(String, Id)>,
}

/// Names the shared parts of `root` when its tree is larger than [`NAMING_NODES`].
pub fn name_shared(graph: &Graph, root: Id) -> Option<Named> {
    if graph.tree_size(root, &mut HashMap::new()) <= NAMING_NODES {
        return None;
    }
    let order = graph.topo_order(root);
    let mut uses: HashMap<Id, u32> = HashMap::new();
    for &id in &order {
        for a in graph.node(id).args() {
            *uses.entry(a).or_default() += 1;
        }
    }
    // Nodes in place count in full, named ones as one: a part is named when it is used twice
    // or more and is at least MIN_NAMED_NODES big as it prints.
    let mut size: HashMap<Id, u64> = HashMap::new();
    let mut chosen: Vec<Id> = Vec::new();
    let mut is_named: HashSet<Id> = HashSet::new();
    for &id in &order {
        let own = graph.node(id).args().iter().fold(1u64, |acc, a| {
            acc.saturating_add(if is_named.contains(a) { 1 } else { size[a] })
        });
        size.insert(id, own);
        if id != root && uses.get(&id).copied().unwrap_or(0) >= 2 && own >= MIN_NAMED_NODES {
            chosen.push(id);
            is_named.insert(id);
        }
    }
    let names = fresh_names(graph, chosen.len());
    let mut out = graph.clone();
    let mut name_of: HashMap<Id, Id> = HashMap::new();
    for (&id, name) in chosen.iter().zip(&names) {
        let v = out.add_var(Var {
            name: name.clone(),
            shape: graph.shape(id),
            symmetric: false,
            positive_definite: false,
        });
        name_of.insert(id, out.var(v));
    }
    // Every node rebuilt over its arguments' names (where they have one); the ids of the
    // copy are those of the original for nodes that do not change.
    let mut rebuilt: HashMap<Id, Id> = HashMap::new();
    for &id in &order {
        let node = graph.node(id);
        let args: Vec<Id> = node
            .args()
            .iter()
            .map(|a| name_of.get(a).copied().unwrap_or_else(|| rebuilt[a]))
            .collect();
        rebuilt.insert(id, out.push(node.with_args(&args)));
    }
    let defs = chosen
        .iter()
        .zip(names)
        .map(|(id, name)| (name, rebuilt[id]))
        .collect();
    Some(Named {
        body: rebuilt[&root],
        graph: out,
        defs,
    })
}

/// `count` names `s1`, `s2`, ... (or `t1`, ..., `s_1`, ... when the program has such a name)
/// that no variable or dimension of `graph` has, and that are not words of the language.
fn fresh_names(graph: &Graph, count: usize) -> Vec<String> {
    let taken: HashSet<&str> = graph
        .vars
        .iter()
        .map(|v| v.name.as_str())
        .chain(graph.dims.iter().map(|d| d.name.as_str()))
        .collect();
    let prefixes = ["s", "t", "u", "w"]
        .into_iter()
        .map(String::from)
        .chain((1..).map(|k| format!("s{}", "_".repeat(k))));
    for prefix in prefixes {
        let names: Vec<String> = (1..=count).map(|i| format!("{prefix}{i}")).collect();
        if names.iter().all(|n| !taken.contains(n.as_str())) {
            return names;
        }
    }
    unreachable!("the prefixes are endless and the program has finitely many names")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::check_program;

    fn product(k: usize) -> String {
        let t: Vec<String> = (1..=k).map(|i| format!("(x'*x+{i})")).collect();
        format!("x: vector(3); {}", t.join("*"))
    }

    #[test]
    fn small_trees_get_no_names() {
        let p = check_program(&product(3)).unwrap();
        assert!(name_shared(&p.graph, p.root).is_none());
    }

    #[test]
    fn names_avoid_the_programs_own_names() {
        let p = check_program("x: vector(3); s1: scalar; s1*x'*x").unwrap();
        assert_eq!(fresh_names(&p.graph, 2), ["t1", "t2"]);
        let p = check_program(
            "x: vector(3); s1: scalar; t1: scalar; u1: scalar; w1: scalar; s1*t1*u1*w1*x'*x",
        )
        .unwrap();
        assert_eq!(fresh_names(&p.graph, 1), ["s_1"]);
    }
}
