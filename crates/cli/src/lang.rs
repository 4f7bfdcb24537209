//! English and Chinese for every sentence `tour`, `memory`, `fit` and `report` print.
//! Sentences are looked up by their English text; `{0}`, `{1}` ... are filled in after.
//! Technical names (Adam, BatchNorm, --flags, torch.*) stay as they are. A sentence
//! with no translation is a bug: debug builds (and so the tests) panic on it.

use std::fmt::Display;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Lang {
    #[default]
    En,
    Zh,
}

static ZH: &[(&str, &str)] = &[
    // memory
    ("{0} on {1} images, batch {2}, {3}, profile {4}, {5}", "{0}，输入 {1} 图像，批大小 {2}，{3}，配置 {4}，{5}"),
    ("training with {0}", "使用 {0} 训练"),
    ("inference", "推理"),
    ("category", "类别"),
    ("step 1 peak", "第 1 步峰值"),
    ("step 2 peak", "第 2 步峰值"),
    ("after step", "步后"),
    ("what it is", "含义"),
    ("total", "合计"),
    ("(nominal)", "（标称）"),
    ("card total", "显卡总显存"),
    ("the weights and biases the model learns ({0} params)", "模型学习的权重和偏置（{0} 个参数）"),
    ("state that is not learned: BatchNorm running mean and variance", "不参与学习的状态：BatchNorm 的滑动均值和方差"),
    ("one gradient per parameter, made by backward, read by the optimizer", "每个参数一个梯度，由反向传播产生，供优化器读取"),
    ("what the optimizer remembers between steps (momentum, Adam's two moments), made at the first step()", "优化器在各步之间保存的状态（动量、Adam 的两个矩），在第一次 step() 时创建"),
    ("the batch of input images and its int64 labels on the device", "设备上的一批输入图像及其 int64 标签"),
    ("what forward keeps for backward: conv and linear inputs, ReLU outputs, max-pool indices, BatchNorm statistics", "前向传播为反向传播保留的张量：卷积和全连接层的输入、ReLU 的输出、最大池化的索引、BatchNorm 的统计量"),
    ("short-lived tensors: gradients flowing back, outputs nobody keeps, optimizer scratch", "短暂存在的张量：回传的梯度、无人保留的输出、优化器的临时缓冲"),
    ("outside the tensors: the allocator's rounding up to 512 B blocks and the CUDA context", "张量之外的开销：分配器按 512 B 块向上取整，以及 CUDA 上下文"),
    ("one rank of {0} (--gpus {1} x --nodes {2}), strategy {3}: every batch size below is one rank's (each rank draws 1/{0} of the data)", "{0} 个进程中的一个（--gpus {1} x --nodes {2}），策略 {3}：以下批大小均为每个进程的（每个进程读取 1/{0} 的数据）"),
    ("That is more than the {0} images each of the {1} ranks draws from the dataset: its whole share fits in one batch (one step an epoch); no batch above {0} per rank can be drawn.", "这超过了 {1} 个进程中每个进程从数据集中读取的 {0} 张图像：其整份数据可放入一个批次（每个 epoch 一步）；每个进程无法抽取超过 {0} 的批次。"),
    ("To train with an effective batch of {0} ({1} per rank x {2} ranks): micro-batches of {3} per rank with --accumulation-steps {4} (peak {5}).", "要以有效批大小 {0}（每个进程 {1} x {2} 个进程）训练：每个进程微批 {3}，--accumulation-steps {4}（峰值 {5}）。"),
    ("Learning rate at the global batch {0} ({1} ranks; tuned {2} at batch {3}):", "全局批大小 {0} 下的学习率（{1} 个进程；在批大小 {3} 时调得 {2}）："),
    ("No strategy fits {0} images per GPU ({1} in all) in one step. With gradient accumulation, the cheapest: {2}, micro-batches of {3} per GPU with --accumulation-steps {4} ({5} in all).", "没有策略能在一步内容纳每个 GPU {0} 张图像（总计 {1}）。使用梯度累积，最省的是：{2}，每个 GPU 微批 {3}，--accumulation-steps {4}（总计 {5}）。"),
    ("No strategy fits {0} images per GPU ({1} in all) in one step.", "没有策略能在一步内容纳每个 GPU {0} 张图像（总计 {1}）。"),
    ("Activation checkpointing: the layers in {0} segments (checkpoint_sequential); forward runs again in backward.", "激活检查点：各层分为 {0} 段（checkpoint_sequential）；前向在反向中再运行一次。"),
    ("one rank of {0} (--gpus {1} x --nodes {2}), strategy {3}: batch {4} per rank, {5} in all", "{0} 个进程中的一个（--gpus {1} x --nodes {2}），策略 {3}：每个进程批大小 {4}，总计 {5}"),
    ("many GPUs: DDP's gradient buckets, DeepSpeed's IPG buffers, gathered parameters and reduce-scatter buffers of sharding", "多 GPU：DDP 的梯度桶、DeepSpeed 的 IPG 缓冲、分片训练中聚合的参数与 reduce-scatter 缓冲"),
    ("Peak of step {0}: {1} ({2} B) in {3}, at {4}.", "第 {0} 步峰值：{1}（{2} B），出现在{3}阶段，位置 {4}。"),
    ("Step 1 differs from step 2: optimizer state is created during the first step(), and step 1's gradients live until step 2's zero_grad().", "第 1 步与第 2 步不同：优化器状态在第一次 step() 中创建，而第 1 步的梯度一直存活到第 2 步的 zero_grad()。"),
    ("Overhead includes {0}{1}; torch.cuda.max_memory_allocated() would report about {2}.", "开销中包含{0}{1}；torch.cuda.max_memory_allocated() 报告的值约为 {2}。"),
    ("Overhead includes {0}{1}.", "开销中包含{0}{1}。"),
    ("the CUDA context, estimated at {0} (set it with --cuda-context)", " CUDA 上下文，估计为 {0}（可用 --cuda-context 设置）"),
    ("the CUDA context, {0} as given with --cuda-context", " CUDA 上下文，{0}（由 --cuda-context 给定）"),
    (" and NCCL's buffers, estimated at {0} (set them with --nccl-buffer)", "，以及 NCCL 的缓冲区，估计为 {0}（可用 --nccl-buffer 设置）"),
    ("nvidia-smi total: estimated: the CUDA context ({0}) + NCCL's buffers ({1}) + reserved.", "nvidia-smi 总量：估计值：CUDA 上下文（{0}）+ NCCL 缓冲区（{1}）+ 保留。"),
    ("  {0} ({1}) - CUDA context {2} - NCCL buffers {3} = {4} for the allocator", "  {0}（{1}）- CUDA 上下文 {2} - NCCL 缓冲区 {3} = 分配器可用 {4}"),
    ("  {0} ({1}): the CUDA context ({2}) and NCCL's buffers ({3}) take all of it, {4} is left for the allocator", "  {0}（{1}）：CUDA 上下文（{2}）和 NCCL 缓冲区（{3}）就占满了，留给分配器的是 {4}"),
    ("On the GPU, with the caching allocator simulated (PYTORCH_CUDA_ALLOC_CONF: {0}):", "在 GPU 上，模拟缓存分配器（PYTORCH_CUDA_ALLOC_CONF：{0}）："),
    ("step", "步"),
    ("allocated peak", "已分配峰值"),
    ("reserved peak", "保留峰值"),
    ("fragmentation at peak", "峰值时碎片率"),
    ("nvidia-smi total", "nvidia-smi 总量"),
    ("Use {0}, not {1}: at {2} the caching allocator cannot serve the steps (its segments and cuDNN's workspaces are not in the budget's peak).", "请用 {0}，而不是 {1}：批大小为 {2} 时缓存分配器无法满足这些训练步（预算的峰值不含它的内存段与 cuDNN 工作区）。"),
    ("Nothing runs on the card, though {0} fits the budget: its peak counts neither the caching allocator's segments nor the cuBLAS and cuDNN workspaces.", "显卡上什么都跑不了，尽管 {0} 在预算之内：预算的峰值既不含缓存分配器的内存段，也不含 cuBLAS 与 cuDNN 的工作区。"),
    ("Power of two to train with: {0} (capped by what the caching allocator serves, below)", "用于训练的 2 的幂：{0}（受下方缓存分配器能满足的批大小限制）"),
    ("No batch to train with: the caching allocator, below, serves not even the smallest.", "没有可用于训练的批大小：下方的缓存分配器连最小的批都满足不了。"),
    ("  (Near the limit the allocator's answer is not monotonic: a larger batch may still run where a smaller one failed, as fragmentation allows in PyTorch.)", "  （接近上限时分配器的结果并不单调：较小的批失败时，较大的批仍可能运行，PyTorch 中的碎片化也会如此。）"),
    ("card total (PyTorch's, else nvidia-smi's)", "显卡总量（PyTorch 所见，否则 nvidia-smi 所示）"),
    ("{0} (steady state)", "{0}（稳态）"),
    ("{0} (out of memory)", "{0}（显存不足）"),
    ("reserved: modelled, as torch.cuda.max_memory_reserved() counts it: with expandable_segments, one segment per pool that maps pages as it grows (2 MiB for small requests, 20 MiB for large ones).", "保留：建模值，按 torch.cuda.max_memory_reserved() 的口径：开启 expandable_segments 时每个池只有一个段，随增长映射新页（小请求 2 MiB，大请求 20 MiB）。"),
    ("max_split_size_mb with expandable_segments: a free block of max_split_size_mb or more serves no smaller request (PyTorch's get_free_block), so those map new pages past it and reserved can grow well beyond either setting alone.", "max_split_size_mb 与 expandable_segments 同用时：不小于 max_split_size_mb 的空闲块不服务更小的请求（PyTorch 的 get_free_block），这些请求会在其后映射新页，保留内存可能远超任一设置单独使用时。"),
    ("garbage_collection_threshold acts only under a per-process memory fraction (fit --fraction), as in PyTorch: here it changes nothing.", "garbage_collection_threshold 只在设置了进程显存比例时生效（fit --fraction），与 PyTorch 相同：这里它不改变任何结果。"),
    ("Gradient accumulation: {0} micro-batches of {1} per optimizer step; the figures below are one micro-batch's.", "梯度累积：每个优化器步 {0} 个大小为 {1} 的微批；下面的数字是一个微批的。"),
    ("{0} (cache still growing)", "{0}（缓存仍在增长）"),
    ("allocated: modelled, as torch.cuda.max_memory_allocated() counts it; the cuBLAS and cuBLASLt workspaces ({0}: one cuBLAS workspace for forward's thread, 1 MiB for cuBLASLt) are included.", "已分配：建模值，按 torch.cuda.max_memory_allocated() 的口径；包含 cuBLAS 与 cuBLASLt 工作区（{0}：前向线程一个 cuBLAS 工作区，cuBLASLt 1 MiB）。"),
    ("allocated: modelled, as torch.cuda.max_memory_allocated() counts it; the cuBLAS and cuBLASLt workspaces ({0}: one cuBLAS workspace for forward's thread, one for backward's, 1 MiB for cuBLASLt) are included.", "已分配：建模值，按 torch.cuda.max_memory_allocated() 的口径；包含 cuBLAS 与 cuBLASLt 工作区（{0}：前向线程与反向线程各一个 cuBLAS 工作区，cuBLASLt 1 MiB）。"),
    ("reserved: modelled, as torch.cuda.max_memory_reserved() counts it: segments of 2 MiB, 20 MiB, or the request rounded up to 2 MiB.", "保留：建模值，按 torch.cuda.max_memory_reserved() 的口径：段大小为 2 MiB、20 MiB，或按 2 MiB 向上取整的请求大小。"),
    ("nvidia-smi total: estimated: the CUDA context ({0}) + reserved.", "nvidia-smi 总量：估计值：CUDA 上下文（{0}）+ 保留。"),
    ("cuDNN workspaces: estimated per convolution (the largest {0}) from the plans cuDNN 9 picked on Hopper cards, and inside allocated and reserved; --cudnn-workspace caps them.", "cuDNN 工作区：按卷积估计（最大 {0}），依据 cuDNN 9 在 Hopper 显卡上选择的方案，已计入已分配和保留；--cudnn-workspace 可设上限。"),
    ("Estimates: the CUDA context depends on the driver, the card and the CUDA version (--cuda-version, --cuda-context; docs/ARCHITECTURE.md has the table); cuDNN's workspaces on the plans cuDNN picks (estimated per convolution; --cudnn-workspace caps them).", "估计：CUDA 上下文取决于驱动、显卡和 CUDA 版本（--cuda-version、--cuda-context；表见 docs/ARCHITECTURE.md）；cuDNN 工作区取决于 cuDNN 选择的方案（按卷积估计；--cudnn-workspace 可设上限）。"),
    ("CUDA out of memory under a limit of {0}: step {1}, {2}, at {3}; tried to allocate {4}.", "在 {0} 的上限下 CUDA 显存不足：第 {1} 步，{2}阶段，位置 {3}；尝试分配 {4}。"),
    ("Fits: the allocator served every request of the {0} steps within a limit of {1}.", "放得下：分配器在 {1} 的上限内满足了 {0} 步中的每一次请求。"),
    ("On the card, by what fails (PyTorch's caching allocator simulated, PYTORCH_CUDA_ALLOC_CONF: {0}):", "按实际失败判断（模拟 PyTorch 缓存分配器，PYTORCH_CUDA_ALLOC_CONF：{0}）："),
    ("  {0} ({1}): the CUDA context alone ({2}) takes all of it, {3} is left for the allocator", "  {0}（{1}）：仅 CUDA 上下文（{2}）就占满了，留给分配器的是 {3}"),
    ("  {0} ({1}) - CUDA context {2} = {3} for the allocator", "  {0}（{1}）- CUDA 上下文 {2} = 分配器可用 {3}"),
    ("  and at most {0} under torch.cuda.set_per_process_memory_fraction", "  且在 torch.cuda.set_per_process_memory_fraction 下至多 {0}"),
    ("  Largest batch found to run: {0} (max_memory_allocated {1}, max_memory_reserved {2}: modelled; nvidia-smi {3}: estimated)", "  找到的能运行的最大批大小：{0}（max_memory_allocated {1}、max_memory_reserved {2}：建模值；nvidia-smi {3}：估计值）"),
    ("  Not even the smallest batch runs.", "  连最小的批大小也无法运行。"),
    ("  At {0}: CUDA out of memory in step {1}, {2}, at {3} (tried to allocate {4}).", "  批大小 {0} 时：第 {1} 步{2}阶段在 {3} 处 CUDA 显存不足（尝试分配 {4}）。"),
    ("  {0} gives batch {1}; the default settings give {2}.", "  {0} 可运行批大小 {1}；默认设置为 {2}。"),
    ("On each card, by what fails (PyTorch's caching allocator simulated, PYTORCH_CUDA_ALLOC_CONF: {0}):", "各显卡按实际失败判断（模拟 PyTorch 缓存分配器，PYTORCH_CUDA_ALLOC_CONF：{0}）："),
    ("largest batch that runs", "能运行的最大批大小"),
    ("nominal", "标称值"),
    ("forward", "前向"),
    ("backward", "反向"),
    ("optimizer", "优化器"),
    // fit
    ("{0} on {1} images, training with {2}, profile {3}, {4}", "{0}，输入 {1} 图像，使用 {2} 训练，配置 {3}，{4}"),
    ("Card: {0}{1}; budget {2} % = {3} (peaks include the overhead)", "显卡：{0}{1}；预算 {2} % = {3}（峰值包含开销）"),
    ("Largest batch size that fits: {0} (peak {1}; no larger batch is searched: its images would hold more values than one tensor may)", "可容纳的最大批大小：{0}（峰值 {1}；不再搜索更大的批：其图像的值会超过一个张量能容纳的数量）"),
    ("Largest batch size that fits: {0} (peak {1}; at {2}: {3})", "可容纳的最大批大小：{0}（峰值 {1}；批大小 {2} 时为 {3}）"),
    ("Largest power of two under it: {0}", "不超过它的最大 2 的幂：{0}"),
    ("It does not fit even at batch 1.", "即使批大小为 1 也放不下。"),
    ("The lesson's procedure: start at 16 and double while the peak stays under {0} % of the card.", "课程中的做法：从 16 开始，只要峰值低于显卡的 {0} % 就翻倍。"),
    ("batch", "批大小"),
    ("peak", "峰值"),
    ("% of card", "占显卡 %"),
    ("fits", "放得下"),
    ("over the budget: stop", "超出预算：停止"),
    ("What would make batch 1 fit:", "怎样才能让批大小 1 放得下："),
    ("change", "改动"),
    ("peak at batch 1", "批大小 1 的峰值"),
    ("still over", "仍然超出"),
    ("mixed precision ({0})", "混合精度（{0}）"),
    ("activation checkpointing ({0})", "激活检查点（{0}）"),
    ("SGD with momentum instead ({0}): one state tensor, not two", "改用带动量的 SGD（{0}）：一个状态张量而不是两个"),
    ("a fused optimizer ({0}): no per-parameter temporaries", "融合优化器（{0}）：没有逐参数的临时缓冲"),
    ("plain SGD ({0}): no optimizer state at all", "普通 SGD（{0}）：完全没有优化器状态"),
    ("pure bf16 training ({0}): half of every tensor, weights included", "纯 bf16 训练（{0}）：所有张量减半，包括权重"),
    ("a smaller input ({0})", "更小的输入（{0}）"),
    ("all of AMP, checkpointing and SGD together", "同时使用 AMP、检查点和 SGD"),
    ("Largest batch on each card, within {0} % of its memory:", "每张显卡上可容纳的最大批大小（使用其显存的 {0} %）："),
    ("card", "显卡"),
    ("memory", "显存"),
    ("budget", "预算"),
    ("largest batch", "最大批大小"),
    ("power of two", "2 的幂"),
    ("peak at the largest batch", "最大批大小时的峰值"),
    ("none", "无"),
    ("A largest batch above the dataset's {0} images means the whole dataset fits in one batch.", "最大批大小超过数据集的 {0} 张图像，意味着整个数据集可以放进一个批次。"),
    ("{0} on {1} images, inference (model.eval() under torch.no_grad(), no optimizer), profile {2}, {3}", "{0}，输入 {1} 图像，推理（model.eval() 且在 torch.no_grad() 下，没有优化器），配置 {2}，{3}"),
    ("Note: {0} is in decimal units (1 GB = 10^9 B); cards are measured in binary units (1 GiB = 2^30 B), so a card sold as 12 GB has 12GiB.", "注意：{0} 使用十进制单位（1 GB = 10^9 B）；显卡显存按二进制单位计算（1 GiB = 2^30 B），标称 12 GB 的显卡实际有 12GiB。"),
    ("That is more than the dataset's {0} images: the whole dataset fits in one batch (one step an epoch, as in full-batch training); no batch above {0} can be drawn from it.", "这超过了数据集的 {0} 张图像：整个数据集可以放进一个批次（每轮只有一步，即全批量训练）；无法从中取出大于 {0} 的批次。"),
    ("Largest power of two within the dataset: {0}", "不超过数据集大小的最大 2 的幂：{0}"),
    ("It does not fit even at batch {0}, the smallest BatchNorm allows in training.", "即使批大小为 {0}（训练时 BatchNorm 允许的最小值）也放不下。"),
    ("result", "结果"),
    ("the forward pass", "前向传播"),
    ("the optimizer step", "优化器更新步骤"),
    ("What would make batch {0} fit (each change alone, then all together; budget {1}):", "怎样才能让批大小 {0} 放得下（先逐项改动，再全部一起；预算 {1}）："),
    ("peak at batch {0}", "批大小 {0} 的峰值"),
    ("vs as given", "相对原设置"),
    ("as given: {0}, {1}", "原设置：{0}，{1}"),
    ("as given: inference, {0}", "原设置：推理，{0}"),
    ("over the budget", "超出预算"),
    ("no change", "没有变化"),
    ("\"no change\" ({0}): these save less than 1 % because the peak is in {1}, at {2}, where the weights, gradients and optimizer state alone take {3} of the {4}; they shrink what is not alive there (activations, the input).", "“没有变化”（{0}）：这些改动节省不到 1 %，因为峰值出现在{1}，位置 {2}，此时仅权重、梯度和优化器状态就占了 {4} 中的 {3}；它们缩小的是那时并不存在的东西（激活、输入）。"),
    ("mixed precision keeps a bf16 copy of the weights for forward and backward, which at a small batch costs more than the smaller activations save", "混合精度在前向和反向中保留一份 bf16 权重副本，批大小很小时它的开销超过激活变小所省下的"),
    ("checkpointing runs each segment's forward again in backward, so its outputs are alive again at the peak", "激活检查点在反向时重新运行每段的前向，因此这些输出在峰值处再次存在"),
    ("it moves the peak to where it adds memory", "它把峰值移到了会增加内存的位置"),
    ("All together ({0}) is worse than {1} alone ({2}): changes interact, and here {3} adds memory ({4} without it): {5}.", "全部一起（{0}）比单独使用 {1}（{2}）更差：改动之间会相互影响，这里 {3} 增加了内存（去掉它为 {4}）：{5}。"),
    ("To train with an effective batch of {0}: micro-batches of {1} with --accumulation-steps {2} (peak {3}).", "要以等效批大小 {0} 训练：使用大小为 {1} 的微批，并设置 --accumulation-steps {2}（峰值 {3}）。"),
    ("Learning rate at batch {0} (tuned {1} at batch {2}):", "批大小 {0} 时的学习率（在批大小 {2} 下调好的学习率为 {1}）："),
    ("linear scaling rule: {0} (lr x {1}/{2}; SGD, with a few epochs of warm-up)", "线性缩放规则：{0}（lr x {1}/{2}；适用于 SGD，配合几个 epoch 的预热）"),
    ("square-root scaling rule: {0} (lr x sqrt({1}/{2}); usual for Adam)", "平方根缩放规则：{0}（lr x sqrt({1}/{2})；Adam 常用）"),
    ("Plot: {0}", "图表：{0}"),
    ("{0} on {1} ranks of {2} ({3}), {4}, within {5} % of each card:", "{0}，{1} 个进程，每个 {2}（{3}），{4}，每块卡使用不超过 {5} %："),
    ("strategy", "策略"),
    ("largest batch per GPU", "每块 GPU 的最大批大小"),
    ("global batch", "全局批大小"),
    ("peak per GPU at it", "该批大小下每块 GPU 的峰值"),
    ("Cheapest that fits: {0}, {1} images per GPU ({2} in all).", "能放下的最省通信的策略：{0}，每块 GPU {1} 张图像（总计 {2}）。"),
    ("No strategy fits a batch of one per GPU on this card.", "在这块卡上，没有策略能放下每块 GPU 批大小为 1。"),
    ("That effective batch is more than the {0} training images: one optimizer step would take more than an epoch.", "该有效批大小超过了 {0} 张训练图像：一次优化器更新将超过一个 epoch。"),
    ("Per rank, modelled; NCCL's buffers are an estimate (--nccl-buffer). --strategy S shows one strategy in full, with the allocator, and plans the two left out here (zero3, fsdp1).", "按每个进程建模；NCCL 缓冲区为估计值（--nccl-buffer）。用 --strategy S 查看单个策略的完整结果（含分配器），并可规划此处未列出的两种（zero3、fsdp1）。"),
    ("{0} {1}: peak memory by batch size ({2}, {3})", "{0} {1}：不同批大小的峰值显存（{2}，{3}）"),
    ("batch size", "批大小"),
    ("GiB at the peak", "峰值（GiB）"),
    ("card {0}", "显卡 {0}"),
    ("{0} % budget", "{0} % 预算"),
    ("largest batch {0}", "最大批大小 {0}"),
    ("{0} on {1}: test accuracy by batch size", "{0} 在 {1} 上：不同批大小的测试准确率"),
    ("{0} on {1}: training speed by batch size", "{0} 在 {1} 上：不同批大小的训练速度"),
    ("images per second", "每秒图像数"),
    ("{0} on {1}: training loss", "{0} 在 {1} 上：训练损失"),
    ("images seen", "已见图像数"),
    ("loss per step", "每步损失"),
    ("batch {0}", "批大小 {0}"),
    // tour
    ("vramlab tour: how much memory does training take, and where does it go?", "vramlab 导览：训练需要多少显存，它们都去了哪里？"),
    ("1. Image formats", "1. 图像格式"),
    ("An image is a tensor of channels x height x width. Stored as uint8 it takes one byte per value; as the float32 a model trains on, four.", "一张图像是一个 通道 x 高 x 宽 的张量。以 uint8 存储时每个值占 1 字节；模型训练用的 float32 占 4 字节。"),
    ("format", "格式"),
    ("shape", "形状"),
    ("values", "数值个数"),
    ("grayscale (Fashion-MNIST)", "灰度（Fashion-MNIST）"),
    ("colour (CIFAR-10)", "彩色（CIFAR-10）"),
    ("A float32 CIFAR image is 12 KB: 3,072 values of 4 bytes.", "一张 float32 的 CIFAR 图像占 12 KB：3,072 个值，每个 4 字节。"),
    ("2. The model: SimpleCNN", "2. 模型：SimpleCNN"),
    ("(vramlab summary simple_cnn shows every layer.)", "（vramlab summary simple_cnn 会列出每一层。）"),
    ("3. The lesson's numbers, as it prints them: its MB is 1024*1024 B (a MiB) and its KB 1024 B (a KiB); the rest of vramlab writes MiB and KiB", "3. 课程中的数字，按课程原样打印：课程的 MB 是 1024*1024 B（即 MiB），KB 是 1024 B（即 KiB）；vramlab 其余部分写作 MiB 和 KiB"),
    ("Total parameters: {0}", "参数总数：{0}"),
    ("Parameter memory: {0} MB", "参数显存：{0} MB"),
    ("Adam optimizer state: {0} MB", "Adam 优化器状态：{0} MB"),
    ("One image: {0} KB", "一张图像：{0} KB"),
    ("Batch of 4: {0} KB", "4 张一批：{0} KB"),
    ("Batch of 64: {0} MB", "64 张一批：{0} MB"),
    ("4. What the lesson leaves out", "4. 课程没有讲到的部分"),
    ("Gradients: {0} MB, one per parameter, alive from backward until the next zero_grad().", "梯度：{0} MB，每个参数一个，从反向传播一直存活到下一次 zero_grad()。"),
    ("Activations: forward keeps {0} per image for backward (conv inputs, ReLU outputs, max-pool inputs and int64 indices), {1}x the image itself.", "激活值：前向传播为反向传播每张图像保留 {0}（卷积输入、ReLU 输出、最大池化的输入和 int64 索引），是图像本身的 {1} 倍。"),
    ("The peak: not the sum of the parts, but the highest point of the step's timeline.", "峰值：不是各部分之和，而是一个训练步时间线上的最高点。"),
    ("profile", "配置"),
    ("in", "阶段"),
    ("grads", "梯度"),
    ("Adam state", "Adam 状态"),
    ("batch data", "批数据"),
    ("activations", "激活值"),
    ("temporaries", "临时张量"),
    ("(the higher of steps 1 and 2; step 2 holds the Adam state made during step 1)", "（取第 1 步和第 2 步中较高者；第 2 步持有第 1 步创建的 Adam 状态）"),
    ("pytorch-cpu reproduces real PyTorch 2.15 measurements to the byte (tested against shared/reference); pytorch-cuda adds the caching allocator's 512 B rounding and the CUDA context (outside PyTorch's counters), shown as overhead in `vramlab memory`.", "pytorch-cpu 按字节复现真实 PyTorch 2.15 的测量（已用 shared/reference 测试）；pytorch-cuda 另外加入缓存分配器的 512 B 取整和 CUDA 上下文（不在 PyTorch 的计数之内），在 `vramlab memory` 中显示为开销。"),
    ("5. Batch size", "5. 批大小"),
    ("Memory grows with the batch through the data and the activations; parameters, gradients and optimizer state do not. Start small (16), double while the peak stays under about 80 % of the card, and scale the learning rate with the batch.", "显存随批大小增长的部分是数据和激活值；参数、梯度和优化器状态不变。从小批量（16）开始，只要峰值低于显卡的约 80 % 就翻倍，并随批大小调整学习率。"),
    ("Next:", "下一步："),
    // report
    ("vramlab report", "vramlab 报告"),
    ("Model", "模型"),
    ("parameters", "参数"),
    ("MACs per image", "每张图像的乘加次数"),
    ("Dataset", "数据集"),
    ("samples per class, first of each class", "每类样本（各类的前几张）"),
    ("images", "图像"),
    ("classes", "类别"),
    ("Layers", "各层"),
    ("{0} layers", "{0} 层"),
    ("layer", "层"),
    ("type", "类型"),
    ("output", "输出"),
    ("kept for backward", "为反向保留"),
    ("Memory at batch {0}", "批大小 {0} 时的显存"),
    ("Memory during one training step", "一个训练步中的显存"),
    ("allocated (tensors alive)", "已分配（存活张量）"),
    ("reserved (caching allocator, simulated)", "已保留（缓存分配器，模拟）"),
    ("bytes alive after each op", "每个算子之后的存活字节数"),
    ("without the CUDA context", "不含 CUDA 上下文"),
    ("op", "算子"),
    ("Batch size", "批大小"),
    ("peak memory by batch size", "不同批大小的峰值显存"),
    ("Batch-size sweep", "批大小扫描"),
    ("images/s", "图像/秒"),
    ("final loss", "最终损失"),
    ("test accuracy", "测试准确率"),
    ("measured peak", "实测峰值"),
    ("planned peak", "预测峰值"),
    ("Made by vramlab {0}.", "由 vramlab {0} 生成。"),
];

/// The sentence in `lang`, `{0}`... filled from `args`.
pub fn t(lang: Lang, key: &str, args: &[&dyn Display]) -> String {
    let template = match lang {
        Lang::En => key,
        Lang::Zh => match ZH.iter().find(|(en, _)| *en == key) {
            Some((_, zh)) => zh,
            None => {
                debug_assert!(false, "no Chinese for `{key}`");
                key
            }
        },
    };
    let mut s = template.to_string();
    for (i, a) in args.iter().enumerate() {
        s = s.replace(&format!("{{{i}}}"), &a.to_string());
    }
    s
}

/// A sentence without arguments.
pub fn s(lang: Lang, key: &str) -> String {
    t(lang, key, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_translation_keeps_its_placeholders() {
        for (en, zh) in ZH {
            for i in 0..6 {
                let p = format!("{{{i}}}");
                assert_eq!(
                    en.contains(&p),
                    zh.contains(&p),
                    "`{en}` and `{zh}` differ in {p}"
                );
            }
        }
        let mut keys: Vec<&str> = ZH.iter().map(|p| p.0).collect();
        keys.sort();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n, "a sentence is listed twice");
    }

    #[test]
    fn arguments_fill_the_template() {
        assert_eq!(
            t(Lang::Zh, "Total parameters: {0}", &[&62006]),
            "参数总数：62006"
        );
        assert_eq!(
            t(Lang::En, "Total parameters: {0}", &[&62006]),
            "Total parameters: 62006"
        );
    }
}
