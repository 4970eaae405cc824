//! Derivative size is polynomial in the input, and large formulas print with named parts
//! that read back.
//!
//! Families of programs that grow with `k` (products and quotients of `k` scalar factors,
//! `k`-deep compositions and powers) are differentiated twice. The stated bound: the
//! derivative's DAG has at most `4·k³ + 500` nodes, and its printed text at most 12
//! characters per DAG node (32 in LaTeX, 240 in indented JSON), counting the DAG as at least
//! [`NAMING_NODES`] nodes, since a tree up to that size prints unshared. Before names and
//! bounded distribution, the Hessian of the product family printed 11 MB at k = 20, and the
//! terms of the tanh family's Hessian doubled with every level.

mod common;

use std::collections::HashSet;

use common::{derive_for, evaluate_printed, first_usable, rel};
use matgrad::eval::evaluate;
use matgrad::expr::{Graph, Id};
use matgrad::names::NAMING_NODES;
use matgrad::print::{json_tree, render, Format};
use matgrad::verify::{dimension_sizes, random_point, TOLERANCE};
use serde_json::Value;

/// The program of family `f` at size `k`.
fn family(f: usize, k: usize) -> String {
    let x = "x: vector(3);";
    match f {
        0 => {
            let t: Vec<String> = (1..=k).map(|i| format!("(x'*x+{i})")).collect();
            format!("{x} {}", t.join("*"))
        }
        1 => {
            let t: Vec<String> = (1..=k).map(|i| format!("(sum(exp({i}*x))+{i})")).collect();
            format!("{x} {}", t.join("*"))
        }
        2 => {
            let mut s = "x'*x".to_string();
            for _ in 0..k {
                s = format!("tanh({s})");
            }
            format!("{x} {s}")
        }
        3 => {
            let mut s = "x'*x".to_string();
            for _ in 0..k {
                s = format!("(({s})^2+0.5)^0.3");
            }
            format!("{x} {s}")
        }
        _ => {
            let t: Vec<String> = (1..=k).map(|i| format!("(x'*A*x+{i})")).collect();
            format!("{x} A: matrix(3,3); {}", t.join("/"))
        }
    }
}

const FAMILIES: usize = 5;

fn dag_nodes(g: &Graph, root: Id) -> usize {
    g.topo_order(root).len()
}

#[test]
fn derivative_size_stays_within_a_cubic_bound() {
    for f in 0..FAMILIES {
        for k in [2, 4, 8, 12, 16] {
            let source = family(f, k);
            for hessian in [false, true] {
                let d = derive_for(&source, "x", hessian);
                let g = &d.program.graph;
                let nodes = dag_nodes(g, d.node);
                let bound = 4 * k * k * k + 500;
                assert!(
                    nodes <= bound,
                    "{source} (hessian: {hessian}): {nodes} DAG nodes, bound {bound}"
                );
                for format in [Format::Text, Format::Unicode, Format::Latex, Format::Json] {
                    let printed = render(g, d.node, format).len();
                    let per_node = match format {
                        Format::Text | Format::Unicode => 12,
                        Format::Latex => 32,
                        Format::Json => 240,
                    };
                    // A tree of up to NAMING_NODES nodes prints unshared.
                    let limit = per_node * (nodes + NAMING_NODES as usize);
                    assert!(
                        printed <= limit,
                        "{source} (hessian: {hessian}, {format:?}): {printed} characters for {nodes} nodes"
                    );
                }
            }
        }
    }
}

#[test]
fn bounded_forms_agree_with_finite_differences() {
    for f in 0..FAMILIES {
        for k in [3, 6, 9] {
            let source = family(f, k);
            for hessian in [false, true] {
                let d = derive_for(&source, "x", hessian);
                let (_, c) =
                    first_usable(&d, 7, 20).unwrap_or_else(|| panic!("{source}: no point"));
                assert!(
                    c.rel_error < TOLERANCE,
                    "{source} (hessian: {hessian}): relative error {:e}",
                    c.rel_error
                );
            }
        }
    }
}

#[test]
fn named_text_and_shared_json_read_back_to_the_same_value() {
    for f in 0..FAMILIES {
        let source = family(f, 12);
        let d = derive_for(&source, "x", true);
        let g = &d.program.graph;
        let text = render(g, d.node, Format::Text);
        assert!(
            text.contains("\nwhere s1 = "),
            "{source}: no names in\n{text}"
        );
        let env = random_point(g, &dimension_sizes(g), 3);
        let want = evaluate(g, d.node, &env).expect("evaluates");
        let got = evaluate_printed(&d, &source, &text, &env).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            rel(&got, &want) < 1e-12,
            "{source}: text reads back off by {:e}",
            rel(&got, &want)
        );

        let tree = json_tree(g, d.node);
        let defs = tree["where"]
            .as_array()
            .expect("a shared JSON tree has `where`");
        let mut defined = HashSet::new();
        let mut clauses = Vec::new();
        for def in defs {
            let name = def["name"].as_str().expect("a name").to_string();
            clauses.push(format!(
                "{name} = {}",
                json_to_source(&def["tree"], &defined)
            ));
            defined.insert(name);
        }
        let body = json_to_source(&tree, &defined);
        let from_json = format!("{body} where {}", clauses.join(", "));
        let got = evaluate_printed(&d, &source, &from_json, &env).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            rel(&got, &want) < 1e-12,
            "{source}: JSON reads back off by {:e}",
            rel(&got, &want)
        );
    }
}

#[test]
fn small_formulas_print_as_before() {
    let d = derive_for(&family(0, 3), "x", false);
    let text = d.text();
    assert!(!text.contains("where"), "{text}");
    assert!(json_tree(&d.program.graph, d.node).get("where").is_none());
}

/// The JSON tree written back in the input language, each operation in parentheses (a chain
/// of sums or products in one pair, so that long sums do not nest); a `ref` must name a
/// definition before it.
fn json_to_source(v: &Value, defined: &HashSet<String>) -> String {
    let op = v["op"].as_str().expect("an op");
    let chain_op = match op {
        "add" => Some("+"),
        "matmul" | "scale" => Some("*"),
        _ => None,
    };
    if let Some(symbol) = chain_op {
        // The left spine, iteratively: `((a+b)+c)+d` is written `(a+b+c+d)`.
        let same = |v: &Value| match v["op"].as_str() {
            Some("add") => symbol == "+",
            Some("matmul" | "scale") => symbol == "*",
            _ => false,
        };
        let mut rights = Vec::new();
        let mut left = v;
        while same(left) {
            rights.push(json_to_source(&left["args"][1], defined));
            left = &left["args"][0];
        }
        rights.push(json_to_source(left, defined));
        rights.reverse();
        return format!("({})", rights.join(symbol));
    }
    let args: Vec<String> = v["args"]
        .as_array()
        .map(|a| a.iter().map(|x| json_to_source(x, defined)).collect())
        .unwrap_or_default();
    let a = |i: usize| args[i].clone();
    match op {
        "var" => v["name"].as_str().expect("a name").to_string(),
        "ref" => {
            let name = v["name"].as_str().expect("a name").to_string();
            assert!(
                defined.contains(&name),
                "`{name}` is used before its definition"
            );
            name
        }
        "const" => format!("({:e})", v["value"].as_f64().expect("a number")),
        "fill" => {
            let value = v["value"].as_f64().expect("a number");
            let is_vector = v["shape"][1] == 1;
            let kind = if is_vector { "vector" } else { "matrix" };
            format!("({value:e}*{kind}(1))")
        }
        "eye" => "eye".into(),
        "neg" => format!("(-{})", a(0)),
        "div" => format!("({}/{})", a(0), a(1)),
        "hadamard" => format!("({}.*{})", a(0), a(1)),
        "elemdiv" => format!("({}./{})", a(0), a(1)),
        "pow" => format!("({}^{})", a(0), a(1)),
        "elempow" => format!("({}.^{})", a(0), a(1)),
        "matpow" => format!("({}^{})", a(0), v["power"]),
        "transpose" => format!("({})'", a(0)),
        "map" => format!("{}({})", v["func"].as_str().expect("a function"), a(0)),
        "diagpart" => format!("diag({})", a(0)),
        other => format!("{other}({})", a(0)),
    }
}

/// A sum of `k` terms, each with its own scalar variable: `c0*sin(x'*x+0) + ...`.
fn long_sum(k: usize) -> String {
    let terms: Vec<String> = (0..k).map(|i| format!("c{i}*sin(x'*x+{i})")).collect();
    format!("x: vector(3); {}", terms.join("+"))
}

#[test]
fn long_sums_with_many_variables_derive_linearly_and_correctly() {
    // Level by level, simplifying a 10 000-term sum collected every prefix again: 17 s at
    // 8 000 variables. In one pass the derivative's DAG stays linear in the terms.
    for k in [100, 1000] {
        let source = long_sum(k);
        for wrt in ["x", "c7"] {
            let d = derive_for(&source, wrt, false);
            let nodes = dag_nodes(&d.program.graph, d.node);
            assert!(
                nodes <= 12 * k + 50,
                "{k} terms by {wrt}: {nodes} DAG nodes"
            );
        }
    }
    let d = derive_for(&long_sum(100), "x", false);
    let (_, c) = first_usable(&d, 3, 10).expect("a usable point");
    assert!(c.rel_error < TOLERANCE, "relative error {:e}", c.rel_error);
}
