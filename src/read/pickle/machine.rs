//! The pickle machine: one pass over the opcodes, a stack of value ids, the memo, and the
//! allowlist check at every global (see the parent module's docs).

use std::collections::HashMap;

use super::{clipped, long, python3_module, unsupported, Id, Value, CONTAINERS};

/// Most objects a pickle may build: values, stack slots, memo entries and items copied into
/// containers, each some 8 to 64 bytes here though one opcode byte in the stream (so a stream of
/// `NONE`s would otherwise take some 60 times its size). A state dict's pickle builds about 20
/// per tensor: SDXL's about 40,000, a training checkpoint with optimizer states a few hundred
/// thousand.
const MAX_OBJECTS: usize = 1 << 22;

/// Runs the machine over `data`; returns the values and the one the pickle evaluates to.
pub(super) fn run(data: &[u8], allowed: &dyn Fn(&str) -> bool) -> Result<(Vec<Value>, Id), String> {
    let mut m = Machine {
        data,
        at: 0,
        values: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        allowed,
        budget: data.len().saturating_mul(8).saturating_add(1 << 20),
        objects: 0,
    };
    let root = m.run()?;
    Ok((m.values, root))
}

/// One stack slot: a value, or a `MARK`.
type Slot = Id;

struct Machine<'a> {
    data: &'a [u8],
    at: usize,
    values: Vec<Value>,
    stack: Vec<Slot>,
    /// Stack heights at each `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    allowed: &'a dyn Fn(&str) -> bool,
    /// Items and bytes the machine may still copy: the memo lets a short stream copy one large
    /// value many times (a set or bytes built again and again), which must not run away.
    budget: usize,
    /// Objects built so far, bounded by [`MAX_OBJECTS`].
    objects: usize,
}

impl Machine<'_> {
    fn run(&mut self) -> Result<Id, String> {
        loop {
            let at = self.at;
            let op = self.byte()?;
            match op {
                0x80 => {
                    let proto = self.byte()?;
                    if proto > 5 {
                        return Err(format!("pickle protocol {proto} is newer than 5"));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b']' => self.push(Value::List(Vec::new()))?,
                b')' => self.push(Value::Tuple(Vec::new()))?,
                0x8f => self.push(Value::Set(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.underflow(at));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(items))?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()))?;
                }
                b'K' => {
                    let v = self.byte()?;
                    self.push(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()))?;
                }
                0x8a => {
                    let n = self.byte()? as usize;
                    let bytes = self.take(n)?.to_vec();
                    self.push(long(bytes))?;
                }
                0x8b => {
                    let n = self.len32()?;
                    let bytes = self.take(n)?.to_vec();
                    self.push(long(bytes))?;
                }
                b'I' | b'L' => {
                    let line = self.line()?;
                    let text = line.trim_end_matches('L');
                    let v = match text {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        t => Value::Int(t.parse().map_err(|_| {
                            format!("the integer `{}` at byte {at} cannot be read", clipped(t))
                        })?),
                    };
                    self.push(v)?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Value::Float(v))?;
                }
                b'F' => {
                    let line = self.line()?;
                    let v = line.parse().map_err(|_| {
                        format!("the float `{}` at byte {at} cannot be read", clipped(&line))
                    })?;
                    self.push(Value::Float(v))?;
                }
                b'X' => {
                    let n = self.len32()?;
                    self.push_str(n, at)?;
                }
                0x8c => {
                    let n = self.byte()? as usize;
                    self.push_str(n, at)?;
                }
                0x8d => {
                    let n = self.len64()?;
                    self.push_str(n, at)?;
                }
                b'T' => {
                    let n = self.len32()?;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?;
                }
                b'U' => {
                    let n = self.byte()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?;
                }
                b'B' => {
                    let n = self.len32()?;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?;
                }
                b'C' => {
                    let n = self.byte()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?;
                }
                0x8e | 0x96 => {
                    let n = self.len64()?;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) =
                        (&self.values[module], &self.values[name])
                    else {
                        return Err(format!(
                            "STACK_GLOBAL at byte {at} is given something other than two names"
                        ));
                    };
                    let (module, name) = (module.clone(), name.clone());
                    self.spend(module.len() + name.len(), at)?;
                    self.global(&module, &name)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.call(func, args, at)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.call(cls, args, at)?;
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.call(cls, args, at)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = *self.stack.last().ok_or_else(|| self.underflow(at))?;
                    self.build(obj, state, at)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Value::Persistent(pid))?;
                }
                b'q' => {
                    let i = self.byte()?;
                    self.put(i.into(), at)?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.array()?);
                    self.put(i.into(), at)?;
                }
                b'p' => {
                    let line = self.line()?;
                    let i = line.parse().map_err(|_| {
                        format!("PUT `{}` at byte {at} is not an index", clipped(&line))
                    })?;
                    self.put(i, at)?;
                }
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.put(i, at)?;
                }
                b'h' => {
                    let i = self.byte()?;
                    self.get(i.into(), at)?;
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.array()?);
                    self.get(i.into(), at)?;
                }
                b'g' => {
                    let line = self.line()?;
                    let i = line.parse().map_err(|_| {
                        format!("GET `{}` at byte {at} is not an index", clipped(&line))
                    })?;
                    self.get(i, at)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v], at)?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items, at)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v], at)?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items, at)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::Set(items))?;
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = *self.stack.last().ok_or_else(|| self.underflow(at))?;
                    self.count(1)?;
                    self.stack.push(top);
                }
                other => return Err(unsupported(other, at)),
            }
        }
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let b = self.take(N)?;
        b.try_into()
            .map_err(|_| "the pickle is truncated".to_string())
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "the pickle is truncated: {n} bytes are wanted at byte {} of {}",
                    self.at,
                    self.data.len()
                )
            })?;
        let b = &self.data[self.at..end];
        self.at = end;
        Ok(b)
    }

    fn len32(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn len64(&mut self) -> Result<usize, String> {
        let n = u64::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| format!("a length of {n} bytes cannot be read"))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.at..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("the pickle is truncated inside a text line")?;
        let text = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.at += n + 1;
        Ok(text)
    }

    fn push(&mut self, v: Value) -> Result<(), String> {
        self.count(1)?;
        self.values.push(v);
        self.stack.push(self.values.len() - 1);
        Ok(())
    }

    /// Counts `n` more objects (values, stack slots, memo entries, copied items) against
    /// [`MAX_OBJECTS`].
    fn count(&mut self, n: usize) -> Result<(), String> {
        self.objects = self.objects.saturating_add(n);
        if self.objects > MAX_OBJECTS {
            return Err(format!(
                "the pickle builds more than {MAX_OBJECTS} objects (at byte {}), far more than \
                 a state dict's (SDXL's has about 40,000): the file is corrupt or hostile",
                self.at
            ));
        }
        Ok(())
    }

    fn push_str(&mut self, n: usize, at: usize) -> Result<(), String> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b)
            .map_err(|_| format!("the string at byte {at} is not UTF-8"))?
            .to_string();
        self.push(Value::Str(s))?;
        Ok(())
    }

    fn pop(&mut self) -> Result<Id, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.underflow(self.at));
        }
        self.stack.pop().ok_or_else(|| self.underflow(self.at))
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, String> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| format!("a MARK is missing before byte {}", self.at))?;
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }

    fn underflow(&self, at: usize) -> String {
        format!("the pickle's stack is empty at byte {at}: the file is corrupt")
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), String> {
        let full = format!("{}.{name}", python3_module(module));
        if !CONTAINERS.contains(&full.as_str()) && !(self.allowed)(&full) {
            return Err(format!("refused global `{}`", clipped(&full)));
        }
        self.push(Value::Global(full))?;
        Ok(())
    }

    /// Takes `n` from the copy budget.
    fn spend(&mut self, n: usize, at: usize) -> Result<(), String> {
        self.budget = self.budget.checked_sub(n).ok_or_else(|| {
            format!("the pickle copies more data than it holds (at byte {at}): the file is corrupt")
        })?;
        Ok(())
    }

    /// `func(*args)`, recorded or, for Python's containers, built.
    fn call(&mut self, func: Id, args: Id, at: usize) -> Result<(), String> {
        let Value::Global(name) = &self.values[func] else {
            return Err(format!(
                "the pickle calls something that is not an allowed global at byte {at}"
            ));
        };
        let name = name.clone();
        let items: Vec<Id> = match &self.values[args] {
            Value::Tuple(v) => v.clone(),
            _ => {
                return Err(format!(
                    "`{name}` is called without an argument tuple at byte {at}"
                ))
            }
        };
        let copied = match items.first().map(|&i| &self.values[i]) {
            Some(Value::List(v) | Value::Tuple(v) | Value::Set(v)) => v.len(),
            Some(Value::Bytes(b)) => b.len(),
            Some(Value::Str(s)) => s.len(),
            _ => 0,
        };
        self.spend(copied + items.len(), at)?;
        self.count(copied)?;
        let built = match name.as_str() {
            "collections.OrderedDict" | "collections.Counter" if items.is_empty() => {
                Value::Dict(Vec::new())
            }
            "builtins.set" => match items.first().map(|&i| &self.values[i]) {
                None => Value::Set(Vec::new()),
                Some(Value::List(v) | Value::Tuple(v) | Value::Set(v)) => Value::Set(v.clone()),
                _ => {
                    return Err(format!(
                        "`set` of something that is not a sequence at byte {at}"
                    ))
                }
            },
            "builtins.bytearray" => match items.first().map(|&i| &self.values[i]) {
                None => Value::Bytes(Vec::new()),
                Some(Value::Bytes(b)) => Value::Bytes(b.clone()),
                _ => {
                    return Err(format!(
                        "`bytearray` of something that is not bytes at byte {at}"
                    ))
                }
            },
            // Python 3 bytes in a protocol-2 pickle: `_codecs.encode(text, "latin1")`.
            "_codecs.encode" => match items.as_slice() {
                [s, e] if self.values[*e] == Value::Str("latin1".into()) => {
                    let Value::Str(s) = &self.values[*s] else {
                        return Err(format!("`_codecs.encode` of a non-string at byte {at}"));
                    };
                    let bytes: Option<Vec<u8>> =
                        s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
                    Value::Bytes(bytes.ok_or_else(|| {
                        format!("`_codecs.encode` of a non-latin-1 string at byte {at}")
                    })?)
                }
                _ => {
                    return Err(format!(
                        "`_codecs.encode` with other arguments at byte {at}"
                    ))
                }
            },
            "collections.OrderedDict" | "collections.Counter" => {
                return Err(format!("`{name}` with arguments at byte {at} is not read"))
            }
            _ => Value::Call {
                func: name,
                args,
                state: None,
            },
        };
        self.push(built)?;
        Ok(())
    }

    /// `BUILD`: a dict's state updates it; a recorded call keeps its state.
    fn build(&mut self, obj: Id, state: Id, at: usize) -> Result<(), String> {
        match &mut self.values[obj] {
            Value::Call { state: s, .. } => {
                *s = Some(state);
                Ok(())
            }
            // `OrderedDict` state is its attributes (`_metadata` of a state dict): not data.
            Value::Dict(_) => Ok(()),
            _ => Err(format!(
                "BUILD at byte {at} sets the state of something that is not an object"
            )),
        }
    }

    fn put(&mut self, i: u64, at: usize) -> Result<(), String> {
        let top = *self.stack.last().ok_or_else(|| self.underflow(at))?;
        if !self.memo.contains_key(&i) {
            self.count(1)?;
        }
        self.memo.insert(i, top);
        Ok(())
    }

    fn get(&mut self, i: u64, at: usize) -> Result<(), String> {
        let id = *self
            .memo
            .get(&i)
            .ok_or_else(|| format!("memo entry {i} is read at byte {at} but was never stored"))?;
        self.count(1)?;
        self.stack.push(id);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Id>, at: usize) -> Result<(), String> {
        let dict = *self.stack.last().ok_or_else(|| self.underflow(at))?;
        if !items.len().is_multiple_of(2) {
            return Err(format!("SETITEMS at byte {at} has a key without a value"));
        }
        let Value::Dict(pairs) = &mut self.values[dict] else {
            return Err(format!(
                "SETITEMS at byte {at} fills something that is not a dict"
            ));
        };
        pairs.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
        Ok(())
    }

    fn append(&mut self, items: Vec<Id>, at: usize) -> Result<(), String> {
        let list = *self.stack.last().ok_or_else(|| self.underflow(at))?;
        match &mut self.values[list] {
            Value::List(v) | Value::Set(v) => {
                v.extend(items);
                Ok(())
            }
            _ => Err(format!(
                "APPENDS at byte {at} fills something that is not a list"
            )),
        }
    }
}
