//! The loader nodes of a graph: checkpoints, denoisers, text encoders and VAEs opened (headers
//! only) into graph values, each input summarized for the recipe and the dry run.

use super::*;

impl Compiler<'_> {
    fn summary(&mut self, gn: &GraphNode, source: &Source, files: Vec<PathBuf>, bytes: u64) {
        self.out.inputs.push(InputSummary {
            node: gn.id.clone(),
            class: gn.class().to_string(),
            name: source.name(),
            files,
            bytes,
            arch: None,
        });
    }

    /// A LoRA's files and bytes, for the dry run and the recipe.
    pub(super) fn lora_summary(&mut self, gn: &GraphNode, lora: &crate::merge::Lora) {
        let (mut files, mut bytes) = (Vec::new(), 0);
        for m in lora.modules.values() {
            let tensors = [&m.up, &m.down, &m.mid, &m.alpha]
                .into_iter()
                .flatten()
                .chain(
                    [&m.diff, &m.diff_b, &m.set]
                        .into_iter()
                        .flatten()
                        .map(|(_, t)| t),
                );
            for t in tensors {
                bytes += t.byte_len();
                t.input_files(&mut |f| files.push(f.path().to_path_buf()));
            }
        }
        files.sort();
        files.dedup();
        self.out.inputs.push(InputSummary {
            node: gn.id.clone(),
            class: gn.class().to_string(),
            name: lora.name.clone(),
            files,
            bytes,
            arch: None,
        });
    }

    pub(super) fn load_checkpoint(
        &mut self,
        gn: &GraphNode,
        source: &Source,
    ) -> Result<Vec<Value>> {
        let origin = format!("{} {}", gn.describe(), source.name());
        let missing =
            |kind: ComponentKind| Error::InvalidInput(format!("{origin} has no {kind} component"));
        let opened = match source {
            Source::Path(p) => {
                let key = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                match self.opened.get(&key) {
                    Some(o) => Arc::clone(o),
                    None => {
                        let mut input =
                            open_input(p, None).map_err(|e| in_node(&gn.describe(), e))?;
                        let arch = model_arch(&origin, &input.components)?;
                        let files = input.files();
                        let mut take =
                            |kind| input.components.take(kind).ok_or_else(|| missing(kind));
                        let o = Arc::new(Opened {
                            model: Arc::new(take(ComponentKind::Model)?),
                            clip: Arc::new(take(ComponentKind::Clip)?),
                            vae: Arc::new(take(ComponentKind::Vae)?),
                            audio: input.components.take(ComponentKind::AudioVae).map(Arc::new),
                            arch,
                            prediction: input.prediction,
                            files,
                            bytes: input.bytes,
                        });
                        self.opened.insert(key, Arc::clone(&o));
                        o
                    }
                }
            }
            Source::Memory { components, .. } => {
                let part = |kind| components.get(kind).cloned().ok_or_else(|| missing(kind));
                Arc::new(Opened {
                    model: Arc::new(part(ComponentKind::Model)?),
                    clip: Arc::new(part(ComponentKind::Clip)?),
                    vae: Arc::new(part(ComponentKind::Vae)?),
                    audio: components
                        .get(ComponentKind::AudioVae)
                        .cloned()
                        .map(Arc::new),
                    arch: model_arch(&origin, components)?,
                    prediction: None,
                    files: Vec::new(),
                    bytes: 0,
                })
            }
        };
        self.summary(gn, source, opened.files.clone(), opened.bytes);
        if let Some(s) = self.out.inputs.last_mut() {
            s.arch = Some(opened.arch);
        }
        Ok(vec![
            Value::Model(ModelValue {
                chains: Chains::shared(Arc::clone(&opened.model)),
                arch: opened.arch,
                prediction: opened.prediction,
                origin: origin.clone(),
            }),
            Value::Clip(ClipValue {
                chains: Chains::shared(Arc::clone(&opened.clip)),
                arch: Some(opened.arch),
                origin,
            }),
            Value::Vae(VaeValue {
                tensors: Arc::clone(&opened.vae),
                audio: opened.audio.clone(),
            }),
        ])
    }

    /// One component of `sources`: files opened as that component, or in-memory components'.
    fn component(
        &mut self,
        gn: &GraphNode,
        kind: ComponentKind,
        sources: &[Source],
        arch: Option<Arch>,
    ) -> Result<InputMap> {
        let name = sources
            .iter()
            .map(Source::name)
            .collect::<Vec<_>>()
            .join(", ");
        let paths: Vec<PathBuf> = sources
            .iter()
            .filter_map(|s| match s {
                Source::Path(p) => Some(p.clone()),
                Source::Memory { .. } => None,
            })
            .collect();
        let mut map = InputMap::new();
        let (mut files, mut bytes) = (Vec::new(), 0);
        if !paths.is_empty() {
            let c = open_component(kind, &paths, arch).map_err(|e| in_node(&gn.describe(), e))?;
            bytes = c.bytes;
            for t in c.tensors.values() {
                t.input_files(&mut |f| files.push(f.path().to_path_buf()));
            }
            map = c.tensors;
        }
        for s in sources {
            if let Source::Memory {
                name, components, ..
            } = s
            {
                let part = components.get(kind).ok_or_else(|| {
                    Error::InvalidInput(format!("{}: `{name}` has no {kind}", gn.describe()))
                })?;
                map.extend(part.iter().map(|(k, t)| (k.clone(), t.clone())));
            }
        }
        files.sort();
        files.dedup();
        self.out.inputs.push(InputSummary {
            node: gn.id.clone(),
            class: gn.class().to_string(),
            name,
            files,
            bytes,
            arch: None,
        });
        Ok(map)
    }

    pub(super) fn load_model(&mut self, gn: &GraphNode, source: &Source) -> Result<Value> {
        let map = self.component(gn, ComponentKind::Model, std::slice::from_ref(source), None)?;
        let origin = format!("{} {}", gn.describe(), source.name());
        let arch = model_arch(&origin, &parts(vec![(ComponentKind::Model, map.clone())]))?;
        if let Some(s) = self.out.inputs.last_mut() {
            s.arch = Some(arch);
        }
        Ok(Value::Model(ModelValue {
            chains: Chains::new(map),
            arch,
            prediction: None,
            origin,
        }))
    }

    pub(super) fn load_clip(
        &mut self,
        gn: &GraphNode,
        sources: &[Source],
        arch: Option<Arch>,
    ) -> Result<Value> {
        let map = self.component(gn, ComponentKind::Clip, sources, arch)?;
        let names: Vec<String> = sources.iter().map(Source::name).collect();
        Ok(Value::Clip(ClipValue {
            chains: Chains::new(map),
            arch,
            origin: format!("{} {}", gn.describe(), names.join(", ")),
        }))
    }

    pub(super) fn load_vae(&mut self, gn: &GraphNode, source: &Source) -> Result<Value> {
        let map = self.component(gn, ComponentKind::Vae, std::slice::from_ref(source), None)?;
        Ok(Value::Vae(VaeValue {
            tensors: Arc::new(map),
            audio: None,
        }))
    }
}

/// The architecture of a model's denoiser.
fn model_arch(origin: &str, c: &Components) -> Result<Arch> {
    let shapes = c.shapes();
    let model = shapes
        .get(ComponentKind::Model)
        .ok_or_else(|| Error::InvalidInput(format!("{origin} has no denoiser")))?;
    detect_model(model).map_err(|e| in_node(origin, e))
}
