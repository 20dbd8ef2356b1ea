use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::merge::graph::Node;

fn parse_err(text: &str) -> String {
    match Recipe::parse(text) {
        Err(Error::InvalidInput(m)) => m,
        other => panic!("expected an error for {text:?}, got {other:?}"),
    }
}

fn arg(key: Option<&str>, value: Value) -> Arg {
    Arg {
        key: key.map(str::to_string),
        value,
    }
}

/// Every line kind, as sd-mecha's serializer writes them, with comments and a trailing newline.
#[test]
fn every_line_kind_parses() {
    let text = "version 0.1.0\n\
                # a comment\n\
                model \"C:\\\\models\\\\a \\\"b\\\".safetensors\" model_config=\"sd1-ldm\" merge_space=\"weight\"\n\
                dict key=0.3 other=-2 e=1e-5 flag=true none=null name=\"x y\"\n\
                literal &1 model_config=\"singleton-mecha\" merge_space=null\n\
                merge \"weighted_sum\" &0 &0 alpha=&2\n";
    let r = Recipe::parse(text).unwrap();
    let ins = r.instructions();
    assert_eq!(ins.len(), 4);
    assert_eq!(ins[0].line, 3);
    assert_eq!(ins[0].command, Command::Model);
    assert_eq!(
        ins[0].args,
        vec![
            arg(None, Value::Str("C:\\models\\a \"b\".safetensors".into())),
            arg(Some("model_config"), Value::Str("sd1-ldm".into())),
            arg(Some("merge_space"), Value::Str("weight".into())),
        ]
    );
    assert_eq!(ins[1].command, Command::Dict);
    assert_eq!(
        ins[1].args,
        vec![
            arg(Some("key"), Value::Float(0.3)),
            arg(Some("other"), Value::Int(-2)),
            arg(Some("e"), Value::Float(1e-5)),
            arg(Some("flag"), Value::Bool(true)),
            arg(Some("none"), Value::Null),
            arg(Some("name"), Value::Str("x y".into())),
        ]
    );
    assert_eq!(ins[2].command, Command::Literal);
    assert_eq!(
        ins[2].positional().collect::<Vec<_>>(),
        vec![&Value::Ref(1)]
    );
    assert_eq!(ins[2].keyword("merge_space"), Some(&Value::Null));
    assert_eq!(ins[3].command, Command::Merge);
    assert_eq!(ins[3].line, 6);
    assert_eq!(
        ins[3].args,
        vec![
            arg(None, Value::Str("weighted_sum".into())),
            arg(None, Value::Ref(0)),
            arg(None, Value::Ref(0)),
            arg(Some("alpha"), Value::Ref(2)),
        ]
    );
    assert_eq!(r.text(), text);
}

#[test]
fn every_parse_error_names_its_line() {
    for (text, needle) in [
        ("", "line 1: expected the header `version 0.1.0`"),
        ("model \"a\"\n", "line 1: expected the header `version 0.1.0` of an sd-mecha recipe, found `model \"a\"`"),
        ("version 0.0.3\n", "line 1: recipe format version `0.0.3`: this build reads version 0.1.0"),
        ("version 0.1.0\n# only a comment\n", "the recipe has no instruction"),
        ("version 0.1.0\nmodel \"a\nx\n", "line 2: a quote is not closed"),
        ("version 0.1.0\nmodel \"a\" \\", "line 2: the line ends with a `\\`"),
        ("version 0.1.0\nmodell \"a\"", "line 2: unknown command `modell`"),
        ("version 0.1.0\nmodel \"a\"\nmerge \"x\" &1", "line 3: argument 2 (`&1`): the reference &1 is not an earlier instruction (instructions count from &0; 1 come before this line)"),
        ("version 0.1.0\nmodel \"a\"\n\nmerge \"x\" &7", "line 4: argument 2 (`&7`): the reference &7"),
        ("version 0.1.0\nmodel \"a\"\nmerge \"x\" &a", "line 3: argument 2 (`&a`): a reference is `&` and an instruction's index"),
        ("version 0.1.0\ndict key=1.2.3", "line 2: argument 1 (`key=1.2.3`): not a number"),
        ("version 0.1.0\ndict key=abc", "line 2: argument 1 (`key=abc`): not a number, reference, quoted string, null, true or false"),
        ("version 0.1.0\ndict key=", "line 2: argument 1 (`key=`): a keyword without a value"),
        ("version 0.1.0\ndict 3", "line 2: `dict` takes only `key=value` entries"),
        ("version 0.1.0\ndict a=1 a=2", "line 2: the keyword `a` is given twice"),
        ("version 0.1.0\nmodel 3", "line 2: `model` takes the model's path, in quotes, first"),
        ("version 0.1.0\nmodel \"a\" \"b\"", "line 2: `model` takes one path"),
        ("version 0.1.0\nmerge &0", "line 2: argument 1 (`&0`): the reference &0"),
        ("version 0.1.0\nmerge 1.5", "line 2: `merge` takes the method's name, in quotes, first"),
        ("version 0.1.0\nliteral", "line 2: `literal` takes one value"),
        ("version 0.1.0\n\"model\" \"a\"", "line 2: `\"model\"` is not a command"),
    ] {
        let m = parse_err(text);
        assert!(m.contains(needle), "{text:?}: `{needle}` in `{m}`");
    }
}

#[test]
fn windows_line_ends_and_indentation_are_read() {
    let r = Recipe::parse("version 0.1.0\r\n  model \"a\"\r\n").unwrap();
    assert_eq!(
        r.instructions()[0].args,
        vec![arg(None, Value::Str("a".into()))]
    );
}

fn opts(dirs: Vec<PathBuf>) -> TranslateOptions {
    TranslateOptions {
        models_dirs: dirs,
        target: Target::File("out.safetensors".into()),
    }
}

/// A folder with two (empty: translation reads no tensor) model files.
fn models() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for n in ["a.safetensors", "b.safetensors"] {
        std::fs::write(d.path().join(n), b"").unwrap();
    }
    d
}

fn translate_err(body: &str) -> String {
    let d = models();
    let text = format!("version 0.1.0\nmodel \"a.safetensors\"\nmodel \"b.safetensors\"\n{body}");
    let r = Recipe::parse(&text).unwrap();
    match r.to_graph(&opts(vec![d.path().to_path_buf()])) {
        Err(Error::InvalidInput(m)) => m,
        other => panic!("expected an error for {body:?}, got {other:?}"),
    }
}

#[test]
fn translation_errors_name_the_line_and_what_is_taken() {
    let runs = methods().join(", ");
    for (body, needle) in [
        ("merge \"crossover\" &0 &1".to_string(), format!("line 4: merge method `crossover` is not run by this build; it runs: {runs}")),
        ("merge \"subtract\" &1 &0\nmerge \"ties_sum\" &2 k=0.5\nmerge \"add_difference\" &1 &3".into(), "line 6: `add_difference`: this build runs ties_sum over differences subtract(model, base) of the model it is added to".into()),
        ("merge \"subtract\" &1 &0\nmerge \"scale\" &2 alpha=2\nmerge \"ties_sum\" &3\nmerge \"add_difference\" &0 &4".into(), "line 7: `add_difference`: this build runs ties_sum over differences subtract(model, base) of the model it is added to (add_difference(base, ties_sum(subtract(m1, base), …))), unscaled".into()),
        ("merge \"subtract\" &1 &0\nmerge \"ties_sum\" &2 k=1.5\nmerge \"add_difference\" &0 &3".into(), "line 5: `ties_sum`: k = 1.5 is outside (0, 1]".into()),
        ("merge \"ties_sum\" &0 &1".into(), "line 4: `ties_sum`: argument 1 is a model; this build takes a difference of two models there".into()),
        ("merge \"subtract\" &1 &0\nmerge \"ties_sum\" &2 vote_sgn=0.5".into(), "line 5: `ties_sum`: `vote_sgn` is a number, and true or false is taken".into()),
        ("merge \"subtract\" &0 &1\nmerge \"subtract\" &1 &0\nmerge \"perpendicular_component\" &2 &3\nmerge \"add_difference\" &0 &4".into(), "line 7: `add_difference`: this build runs perpendicular_component(subtract(a, c), subtract(b, c)) added to that same a".into()),
        ("merge \"subtract\" &1 &0\nmerge \"train_difference_mask\" &1 &0 &1\nmerge \"add_difference\" &0 &2 alpha=&3".into(), "line 6: `add_difference`: train_difference_mask(a, b, c) is run as the alpha of add_difference(a, subtract(b, c))".into()),
        ("merge \"subtract\" &1 &0\nmerge \"model_stock\" &2\nmerge \"add_difference\" &0 &3 alpha=0.5".into(), "line 6: `add_difference`: model_stock's result is added with alpha 1 by this build".into()),
        ("merge \"subtract\" &1 &0\nmerge \"ties_sum_extended\" &2 apply_median=true maxiter=-1\nmerge \"add_difference\" &0 &3".into(), "line 5: `ties_sum_extended`: eps, maxiter and ftol are ≥ 0; 0.000001, -1 and 0.00000000000000000001 given".into()),
        ("merge \"subtract\" &1 &0\nmerge \"dropout\" &2 overlap=2.0\nmerge \"add_difference\" &0 &3".into(), "line 5: `dropout`: overlap = 2: this build runs the independent masks of an odd whole overlap".into()),
        ("merge \"geometric_median\" &0 &1 maxiter=1.5".into(), "line 4: `geometric_median`: `maxiter` is 1.5, and a whole number is taken".into()),
        ("merge \"weighted_sum\" &0 &1 beta=0.5".into(), "line 4: `weighted_sum`: unknown parameter `beta` (it takes: a, b, alpha)".into()),
        ("merge \"weighted_sum\" &0".into(), "line 4: `weighted_sum`: argument `b` missing".into()),
        ("merge \"weighted_sum\" &0 &1 0.5 1".into(), "line 4: `weighted_sum`: 4 positional argument(s), and it takes 3".into()),
        ("merge \"weighted_sum\" &0 &1 0.5 alpha=0.2".into(), "`alpha` is given twice (by position and name)".into()),
        ("merge \"weighted_sum\" &0 &1 alpha=\"x\"".into(), "line 4: the string \"x\" is not a value this build takes there".into()),
        ("merge \"weighted_sum\" &0 &1 alpha=&0".into(), "line 4: `weighted_sum`: `alpha` is a model, and this build takes a number there".into()),
        ("merge \"add_difference\" &0 &1".into(), "line 4: `add_difference`: `b` is a model, and a difference is taken".into()),
        ("merge \"subtract\" &0 &1\nmerge \"weighted_sum\" &2 &1".into(), "line 5: `weighted_sum`: `a` is a difference (sd-mecha's delta space), and a model is taken".into()),
        ("merge \"subtract\" &0 &1".into(), "line 4: the recipe's result is a difference (sd-mecha's delta space), and a model is what is written".into()),
        ("merge \"scale\" &0".into(), "line 4: `scale`: `a` is a model; this build scales differences".into()),
        ("dict key=0.5 other=1\nliteral &2 model_config=\"singleton-mecha\"\nmerge \"weighted_sum\" &0 &1 alpha=&3".into(), "line 5: a literal of a dict other than one number under `key`".into()),
        ("dict key=0.5\nliteral &2 model_config=\"sd1-supermerger_blocks\"".into(), "line 5: a literal for model config \"sd1-supermerger_blocks\": per-key (per-block) values are not supported".into()),
        ("model \"c\"".into(), "line 4: model `c` not found".into()),
        ("model \"a.safetensors\" merge_space=\"delta\"".into(), "line 4: model `a.safetensors` in merge space \"delta\"".into()),
        ("merge \"n_average\"".into(), "line 4: `n_average`: no model to average".into()),
    ] {
        let m = translate_err(&body);
        assert!(m.contains(&needle), "{body:?}: `{needle}` in `{m}`");
    }
}

/// A parameter out of range is named as the recipe writes it, at its line of its file: not as
/// the graph node it becomes (`node 3 (ModelMergeSimple): ratio -inf`).
#[test]
fn parameter_errors_name_the_file_line_method_and_parameter_as_written() {
    let d = models();
    let delta = "merge \"subtract\" &1 &0\n";
    for (body, needle) in [
        (
            "merge \"weighted_sum\" &0 &1 alpha=1e999\n".to_string(),
            "line 4: `weighted_sum`: alpha = inf is not a finite number",
        ),
        (
            format!("{delta}merge \"ties_sum_with_dropout\" &2 probability=2\nmerge \"add_difference\" &0 &3\n"),
            "line 5: `ties_sum_with_dropout`: probability = 2 is outside [0, 1]",
        ),
        (
            format!("{delta}merge \"ties_sum\" &2 k=0\nmerge \"add_difference\" &0 &3\n"),
            "line 5: `ties_sum`: k = 0 is outside (0, 1]",
        ),
        (
            "merge \"geometric_median\" &0 &1 eps=-1\n".to_string(),
            "line 4: `geometric_median`: eps, maxiter and ftol are ≥ 0",
        ),
    ] {
        let file = d.path().join("rc.mecha");
        let text = format!("version 0.1.0\nmodel \"a.safetensors\"\nmodel \"b.safetensors\"\n{body}");
        std::fs::write(&file, text).unwrap();
        let r = Recipe::open(&file).unwrap();
        let m = match r.to_graph(&opts(vec![d.path().to_path_buf()])) {
            Err(Error::InvalidInput(m)) => m,
            other => panic!("expected an error for {body:?}, got {other:?}"),
        };
        let want = format!("{}: {needle}", file.display());
        assert!(m.starts_with(&want), "`{want}` in `{m}`");
        assert!(!m.contains("node 3") && !m.contains("ratio"), "{m}");
    }
}

/// The graph a recipe becomes: sd-mecha's alpha as ComfyUI's ratio `1 − alpha`, one loader per
/// model line, the difference as subtract (multiplier scale·alpha) then add, one save.
#[test]
fn translation_builds_comfyui_nodes() {
    let d = models();
    let text = "version 0.1.0\nmodel \"a.safetensors\"\nmodel \"b\"\n\
                dict key=0.25\nliteral &2 model_config=\"singleton-mecha\"\n\
                merge \"convert_singleton\" &3\nmerge \"weighted_sum\" &0 &1 &4\n\
                merge \"subtract\" &1 &0\nmerge \"scale\" &6 alpha=-2\n\
                merge \"add_difference\" &5 &7 alpha=0.5\nmerge \"fallback\" &8 &0\n";
    let r = Recipe::parse(text).unwrap();
    let t = r.to_graph(&opts(vec![d.path().to_path_buf()])).unwrap();
    let nodes: Vec<&Node> = t.graph.nodes().iter().map(|n| &n.node).collect();
    let classes: Vec<&str> = nodes.iter().map(|n| n.class()).collect();
    assert_eq!(
        classes,
        [
            "CheckpointLoaderSimple",
            "CheckpointLoaderSimple",
            "ModelMergeSimple",
            "CLIPMergeSimple",
            "ModelMergeSubtract",
            "CLIPMergeSubtract",
            "ModelMergeAdd",
            "CLIPMergeAdd",
            "CheckpointSave",
        ]
    );
    match nodes[2] {
        Node::ModelMergeSimple {
            ratio,
            model1,
            model2,
        } => {
            assert_eq!(*ratio, 0.75);
            assert_eq!((model1.node, model2.node), (0, 1));
        }
        n => panic!("{n:?}"),
    }
    match nodes[4] {
        Node::ModelSubtract {
            multiplier,
            model1,
            model2,
        } => {
            assert_eq!(*multiplier, -1.0);
            assert_eq!((model1.node, model2.node), (1, 0));
        }
        n => panic!("{n:?}"),
    }
    match nodes[6] {
        Node::ModelAdd { model1, model2 } => assert_eq!((model1.node, model2.node), (2, 4)),
        n => panic!("{n:?}"),
    }
    match nodes[8] {
        Node::SaveCheckpoint {
            model,
            clip,
            vae,
            target,
        } => {
            assert_eq!((model.node, clip.node, vae.node), (6, 7, 0));
            assert_eq!(target, &Target::File("out.safetensors".into()));
        }
        n => panic!("{n:?}"),
    }
    assert_eq!(t.notes.len(), 1);
    assert!(t.notes[0].contains("`a.safetensors`"), "{:?}", t.notes);
}

#[test]
fn n_average_is_a_chain_of_running_means() {
    let d = models();
    let text =
        "version 0.1.0\nmodel \"a\"\nmodel \"b\"\nmodel \"a\"\nmerge \"n_average\" &0 &1 &2\n";
    let t = Recipe::parse(text)
        .unwrap()
        .to_graph(&opts(vec![d.path().to_path_buf()]))
        .unwrap();
    let ratios: Vec<f64> = t
        .graph
        .nodes()
        .iter()
        .filter_map(|n| match &n.node {
            Node::ModelMergeSimple { ratio, .. } => Some(*ratio),
            _ => None,
        })
        .collect();
    assert_eq!(ratios, [0.5, 1.0 - 1.0 / 3.0]);
}

/// sd-mecha's wrapper `add_difference_ties` (subtracts, `ties_sum`, `add_difference`) becomes
/// one method node over the denoisers and one over the text encoders, with the parameters of
/// both calls; `slerp` one of each with its alpha.
#[test]
fn whole_tensor_methods_become_method_nodes_over_model_and_clip() {
    use crate::merge::methods::Param;
    let d = models();
    let text = "version 0.1.0\nmodel \"a\"\nmodel \"b\"\nmerge \"subtract\" &1 &0\n\
                merge \"ties_sum\" &2 k=0.25 vote_sgn=true\n\
                merge \"add_difference\" &0 &3 alpha=0.5\nmerge \"slerp\" &4 &1 alpha=0.3\n";
    let t = Recipe::parse(text)
        .unwrap()
        .to_graph(&opts(vec![d.path().to_path_buf()]))
        .unwrap();
    let nodes: Vec<&Node> = t.graph.nodes().iter().map(|n| &n.node).collect();
    let classes: Vec<&str> = nodes.iter().map(|n| n.class()).collect();
    assert_eq!(
        classes,
        [
            "CheckpointLoaderSimple",
            "CheckpointLoaderSimple",
            "MergeMethod",
            "CLIPMergeMethod",
            "MergeMethod",
            "CLIPMergeMethod",
            "CheckpointSave",
        ]
    );
    let ties = BTreeMap::from([
        ("alpha".to_string(), Param::Float(0.5)),
        ("k".to_string(), Param::Float(0.25)),
        ("vote_sgn".to_string(), Param::Bool(true)),
    ]);
    match (nodes[2], nodes[3]) {
        (
            Node::Method {
                name,
                models,
                params,
            },
            Node::ClipMethod {
                name: clip_name,
                clips,
                params: clip_params,
            },
        ) => {
            assert_eq!(
                (name.as_str(), clip_name.as_str()),
                ("add_difference_ties", "add_difference_ties")
            );
            assert_eq!(
                models
                    .iter()
                    .map(|s| (s.node, s.output))
                    .collect::<Vec<_>>(),
                [(0, 0), (1, 0)]
            );
            assert_eq!(
                clips.iter().map(|s| (s.node, s.output)).collect::<Vec<_>>(),
                [(0, 1), (1, 1)]
            );
            assert_eq!((params, clip_params), (&ties, &ties));
        }
        n => panic!("{n:?}"),
    }
    match nodes[4] {
        Node::Method {
            name,
            models,
            params,
        } => {
            assert_eq!(name, "slerp");
            assert_eq!(models.iter().map(|s| s.node).collect::<Vec<_>>(), [2, 1]);
            assert_eq!(
                params,
                &BTreeMap::from([("alpha".to_string(), Param::Float(0.3))])
            );
        }
        n => panic!("{n:?}"),
    }
}

/// `ties_sum_with_dropout` (sd-mecha's DARE) added to its base becomes `add_ties_with_dare`
/// with sd-mecha's defaults (k 0.2, not the wrapper's 1; della_eps 0), `seed=null` as seed 0,
/// and `apply_stock` inverted as sd-mecha 1.1.8 runs it (noted); a della_eps is passed on.
#[test]
fn ties_sum_with_dropout_becomes_add_ties_with_dare_with_sd_mechas_defaults() {
    use crate::merge::methods::Param;
    let d = models();
    let text = "version 0.1.0\nmodel \"a\"\nmodel \"b\"\nmerge \"subtract\" &1 &0\n\
                merge \"ties_sum_with_dropout\" &2 probability=0.3 seed=null\n\
                merge \"add_difference\" &0 &3 alpha=0.7\n";
    let t = Recipe::parse(text)
        .unwrap()
        .to_graph(&opts(vec![d.path().to_path_buf()]))
        .unwrap();
    let Node::Method { name, params, .. } = &t.graph.nodes()[2].node else {
        panic!("{:?}", t.graph.nodes()[2].node);
    };
    assert_eq!(name, "add_ties_with_dare");
    let want = BTreeMap::from([
        ("alpha".to_string(), Param::Float(0.7)),
        ("apply_median".to_string(), Param::Bool(false)),
        ("apply_stock".to_string(), Param::Bool(true)),
        ("cos_eps".to_string(), Param::Float(1e-6)),
        ("della_eps".to_string(), Param::Float(0.0)),
        ("eps".to_string(), Param::Float(1e-6)),
        ("ftol".to_string(), Param::Float(1e-20)),
        ("k".to_string(), Param::Float(0.2)),
        ("maxiter".to_string(), Param::Int(100)),
        ("probability".to_string(), Param::Float(0.3)),
        ("rescale".to_string(), Param::Bool(true)),
        ("seed".to_string(), Param::Int(0)),
        ("vote_sgn".to_string(), Param::Bool(false)),
    ]);
    assert_eq!(params, &want);
    assert!(
        t.notes[0].contains("line 5: `ties_sum_with_dropout` applies model stock's t"),
        "{:?}",
        t.notes
    );
    let della = text.replace("seed=null", "seed=null della_eps=-0.25");
    let t = Recipe::parse(&della)
        .unwrap()
        .to_graph(&opts(vec![d.path().to_path_buf()]))
        .unwrap();
    let Node::Method { params, .. } = &t.graph.nodes()[2].node else {
        panic!("{:?}", t.graph.nodes()[2].node);
    };
    assert_eq!(params.get("della_eps"), Some(&Param::Float(-0.25)));
}

/// sd-mecha's `dropout` added to its base becomes the `dropout` method node with sd-mecha's
/// defaults, `seed=null` as seed 0 and add_difference's alpha.
#[test]
fn dropout_becomes_the_dropout_method_with_sd_mechas_defaults() {
    use crate::merge::methods::Param;
    let d = models();
    let text = "version 0.1.0\nmodel \"a\"\nmodel \"b\"\nmerge \"subtract\" &1 &0\n\
                merge \"dropout\" &2 probability=0.3 seed=null\n\
                merge \"add_difference\" &0 &3 alpha=0.7\n";
    let t = Recipe::parse(text)
        .unwrap()
        .to_graph(&opts(vec![d.path().to_path_buf()]))
        .unwrap();
    let Node::Method { name, params, .. } = &t.graph.nodes()[2].node else {
        panic!("{:?}", t.graph.nodes()[2].node);
    };
    assert_eq!(name, "dropout");
    let want = BTreeMap::from([
        ("alpha".to_string(), Param::Float(0.7)),
        ("overlap".to_string(), Param::Float(1.0)),
        ("overlap_emphasis".to_string(), Param::Float(0.0)),
        ("probability".to_string(), Param::Float(0.3)),
        ("rescale".to_string(), Param::Float(1.0)),
        ("seed".to_string(), Param::Int(0)),
    ]);
    assert_eq!(params, &want);
}

#[test]
fn model_paths_resolve_in_the_dirs_in_order_then_as_given() {
    let first = models();
    let second = tempfile::tempdir().unwrap();
    std::fs::write(second.path().join("c.safetensors"), b"").unwrap();
    std::fs::write(second.path().join("a.safetensors"), b"").unwrap();
    let dirs = vec![first.path().to_path_buf(), second.path().to_path_buf()];
    assert_eq!(
        resolve_model("a.safetensors", &dirs).unwrap(),
        first.path().join("a.safetensors")
    );
    assert_eq!(
        resolve_model("c", &dirs).unwrap(),
        second.path().join("c.safetensors")
    );
    let abs = second.path().join("c.safetensors");
    assert_eq!(resolve_model(abs.to_str().unwrap(), &[]).unwrap(), abs);
    let Err(Error::InvalidInput(m)) = resolve_model("zz", &dirs) else {
        panic!("found a missing model");
    };
    assert!(m.contains("model `zz` not found"), "{m}");
    assert!(
        m.contains(&first.path().join("zz.safetensors").display().to_string()),
        "{m}"
    );
}

#[test]
fn a_recipe_is_told_by_its_extension_or_its_first_line() {
    let d = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        d.path().join("x.mecha"),
        d.path().join("y.txt"),
        d.path().join("z.json"),
    );
    std::fs::write(&a, "{}").unwrap();
    std::fs::write(&b, "version 0.1.0\n").unwrap();
    std::fs::write(&c, "{\"1\": {}}").unwrap();
    assert!(is_recipe(&a));
    assert!(is_recipe(&b));
    assert!(!is_recipe(&c));
}

/// Translation recurses once per instruction of a chain: a recipe nested deeper than the limit
/// is refused by line (it overflowed the stack, an abort, at a few thousand), one within it
/// translates on any thread (this test's has the default 2 MiB).
#[test]
fn a_recipe_nested_deeper_than_the_limit_is_refused() {
    let nested = |n: usize| {
        (0..n)
            .map(|i| format!("merge \"weighted_sum\" &0 &{} alpha=0.5\n", i + 1))
            .collect::<String>()
    };
    let e = translate_err(&nested(600));
    assert!(
        e.contains("the recipe nests more than 500 instructions"),
        "{e}"
    );
    let d = models();
    let text = format!(
        "version 0.1.0\nmodel \"a.safetensors\"\nmodel \"b.safetensors\"\n{}",
        nested(480)
    );
    let r = Recipe::parse(&text).unwrap();
    assert!(r.to_graph(&opts(vec![d.path().to_path_buf()])).is_ok());
}
